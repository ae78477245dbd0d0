"""Checkpoints: saving and restoring the whole training state with orbax.

A checkpoint is one step folder ``WORKDIR/checkpoints/<step>/`` with three items:
  * ``state``: the unreplicated ``GANState`` as a tree of arrays: the step,
    the noise key, and for each net its update count, params, BatchNorm
    running statistics and Adam state (count, mu, nu). The input position
    needs no entry of its own: batch k is a pure function of k (see
    ``input_pipeline``), so the step is the position.
  * ``config``: the run's config as JSON, so generate can rebuild the models.
  * ``progress``: JSON facts of the run that the config alone does not give
    (the steps per epoch of its data), so a rerun of a finished run can stop
    before loading any data. Checkpoints written before it existed have none.

Checkpoints written before the nets' states became ``TrainState``s have no
per-net ``step``; ``restore`` fills it from the Adam update count, which is
the same number.

Saving is asynchronous (training continues while orbax writes) and atomic:
orbax writes ``<step>.orbax-checkpoint-tmp-*`` and renames it when complete,
so a process killed mid-save leaves the previous checkpoints intact; stray tmp
folders are never listed as steps and are removed when a run next opens the
folder.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp

from dcgan_jax import state as state_lib

CHECKPOINT_DIR = "checkpoints"
# The model keys a checkpoint's arrays depend on: a mismatch cannot restore.
# A key a checkpoint's config lacks (it predates the key) had its default.
MODEL_KEYS = ("nz", "ngf", "ndf", "image_size", "d_spectral_norm", "d_batch_norm")


def saved_model_keys(saved: dict[str, Any]) -> dict[str, Any]:
  """The model keys of a checkpoint's config, defaults filled in for older ones."""
  from dcgan_jax import defaults  # noqa: PLC0415
  reference = defaults.get_config()
  return {k: saved.get(k, reference[k]) for k in MODEL_KEYS}


def save_every_steps(config, steps_per_epoch: int) -> int:
  """The save interval: ``config.save_every_steps``, or 10 epochs when -1."""
  every = config.save_every_steps
  if every == -1:
    return 10 * steps_per_epoch
  if every < 1:
    raise ValueError(f"config.save_every_steps={every}: use a positive number "
                     "of steps, or -1 for every 10 epochs.")
  return every


def _ocp():
  import orbax.checkpoint as ocp  # noqa: PLC0415 (heavy; only checkpointing needs it)
  return ocp


class Checkpoints:
  """The checkpoints of one folder (an orbax ``CheckpointManager``).

  Args:
    directory: the folder holding the step folders (``WORKDIR/checkpoints``).
    max_to_keep: keep the newest N checkpoints (None: all).
    read_only: never write or delete (restoring from another run).
  """

  def __init__(self, directory: str, max_to_keep: int | None = None,
               read_only: bool = False):
    ocp = _ocp()
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, read_only=read_only, create=not read_only,
        cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler()})

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def all_steps(self) -> list[int]:
    """The complete checkpoints' steps, as on disk now."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state, config, progress: dict | None = None) -> str:
    """Starts saving ``state`` (unreplicated) at step ``state.step``.

    The arrays are copied to host memory before this returns; the write
    finishes in the background (``wait``).

    Args:
      state: the unreplicated ``GANState`` (device or numpy arrays).
      config: the run's config.
      progress: JSON-able facts of the run (``steps_per_epoch``).

    Returns:
      The step folder being written.
    """
    ocp = _ocp()
    step = int(state.step)
    # Host numpy copies: safe against buffer donation by the next train step,
    # and written once (by the primary host) when several hosts save.
    tree = jax.device_get(flax.serialization.to_state_dict(state))
    self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        config=ocp.args.JsonSave(config.to_dict()),
        progress=ocp.args.JsonSave(progress or {})))
    return self.step_path(step)

  def restore(self, template, step: int | None = None):
    """The state saved at ``step`` (default: latest), shaped like ``template``.

    Args:
      template: a state of the same structure (e.g. ``create_train_state``):
        supplies the tree, dtypes and the static optimizer definitions.
      step: which checkpoint.

    Returns:
      The restored state (unreplicated).
    """
    ocp = _ocp()
    step = self._step_or_latest(step)
    target = jax.device_get(flax.serialization.to_state_dict(template))
    saved = self._manager.metadata(step).item_metadata.state
    legacy = [net for net in ("g", "d") if "step" not in saved[net]]
    for net in legacy:  # written before NetState was a TrainState
      del target[net]["step"]
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    tree = restored.state
    for net in legacy:  # a net's update count is its Adam count
      tree[net]["step"] = tree[net]["opt_state"]["0"]["count"]
    tree = jax.tree_util.tree_map(jnp.asarray, tree)
    return flax.serialization.from_state_dict(template, tree)

  def progress(self, step: int | None = None) -> dict[str, Any]:
    """The progress facts saved with the checkpoint at ``step`` ({} if none)."""
    ocp = _ocp()
    step = self._step_or_latest(step)
    if not os.path.isdir(os.path.join(self.step_path(step), "progress")):
      return {}  # written before checkpoints had them
    return self._manager.restore(step, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore())).progress

  def config(self, step: int | None = None) -> dict[str, Any]:
    """The config (a dict) saved with the checkpoint at ``step`` (default: latest)."""
    ocp = _ocp()
    step = self._step_or_latest(step)
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def wait(self) -> None:
    """Blocks until the last save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions and releases the manager."""
    self._manager.close()

  def _step_or_latest(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                f"(steps there: {steps}).")
      return step
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    return steps[-1]


def locate(path: str) -> tuple[str, int | None]:
  """Finds the checkpoints behind ``path``.

  Args:
    path: a workdir (holding ``checkpoints/``), a checkpoints folder, or one
      step folder (``.../checkpoints/1000``).

  Returns:
    (checkpoints folder, step or None for the latest).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist: pass a "
                            "workdir, its checkpoints/ folder or a step folder in it.")
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    return os.path.join(path, CHECKPOINT_DIR), None
  name = os.path.basename(path)
  if name.isdigit() and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    return os.path.dirname(path), int(name)
  return path, None


def check_config(saved: dict[str, Any], config, where: str) -> None:
  """Raises if ``config``'s model sizes differ from the ``saved`` config's."""
  model = saved_model_keys(saved)
  diff = {k: (model[k], config[k]) for k in MODEL_KEYS if model[k] != config[k]}
  if diff:
    raise ValueError(
        f"the checkpoint {where} was trained with other model sizes: "
        f"{', '.join(f'{k}={a} (config: {b})' for k, (a, b) in diff.items())}. "
        "Pass the checkpoint's values (e.g. --config.ngf=...) or use another workdir.")


def open_for_reading(path: str) -> tuple[Checkpoints, int]:
  """A read-only ``Checkpoints`` for ``path`` (see ``locate``) and its step."""
  directory, step = locate(path)
  ckpts = Checkpoints(directory, read_only=True)
  step = ckpts._step_or_latest(step)  # noqa: SLF001
  return ckpts, step


def restore_or_init(ckpts: Checkpoints, state, config):
  """The state a training run starts from, and what its checkpoint recorded.

  The latest checkpoint of the run's own folder if there is one (resume),
  else ``config.init_from``'s checkpoint if set, else ``state`` (fresh).

  Args:
    ckpts: the run's own checkpoints (its owner closes them).
    state: a freshly created state (the template).
    config: the run's config (init_from, model sizes).

  Returns:
    (the state to train from (unreplicated), None for a fresh start, else
    {'config': the checkpoint's config, 'progress': its progress facts,
    'message': where the state comes from, a sentence for the log}).
  """
  if (step := ckpts.latest_step()) is not None:
    return _restore_from(ckpts, step, state, config, "Resumed from step %d (%s).")
  if config.init_from:
    source, step = open_for_reading(config.init_from)
    with source:  # closed however the restore ends
      return _restore_from(source, step, state, config, "Initialised from step %d of %s.")
  return state, None


def _restore_from(source: Checkpoints, step: int, state, config, message: str):
  saved = {"config": source.config(step), "progress": source.progress(step),
           "message": message % (step, source.step_path(step))}
  check_config(saved["config"], config, source.step_path(step))
  return source.restore(state, step), saved

def restore_trained(config, workdir: str, hint: str):
  """A trained run's latest checkpoint, for sampling or evaluation.

  Args:
    config: the current config; ``init_from``, when set, names the run (a
      workdir, checkpoints folder or step folder) instead of ``workdir``.
    workdir: the run whose checkpoints are used.
    hint: appended to the error when there is no checkpoint (what to do).

  Returns:
    (state, config to build the models with: ``config`` with the checkpoint's
    model sizes, dtype and ``ema_decay``, the checkpoint's folder).
  """
  import ml_collections  # noqa: PLC0415 (configs are ConfigDicts; not needed to train)
  try:
    ckpts, step = open_for_reading(config.init_from or workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e} {hint}") from e
  with ckpts:
    saved = ckpts.config(step)
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.update(saved_model_keys(saved))
    cfg.dtype = saved["dtype"]
    cfg.ema_decay = saved.get("ema_decay", 0.0)  # whether the state holds an EMA
    state = ckpts.restore(state_lib.create_train_state(cfg, jax.random.PRNGKey(0)), step)
  return state, cfg, ckpts.step_path(step)
