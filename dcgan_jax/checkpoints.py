"""Saving and restoring the whole training state with orbax.

A checkpoint is a step folder ``WORKDIR/checkpoints/<step>/`` with three items:
``state`` (the ``GANState``'s arrays: its field names are the format),
``config`` (the run's config as JSON, so generate can rebuild the models) and
``progress`` (facts the config does not give: the steps per epoch of the data,
so a rerun of a finished run stops before loading any). The data position is
the step itself: batch k is a pure function of k.

Saves are asynchronous and atomic: orbax writes ``<step>.orbax-checkpoint-tmp-*``
and renames it when complete, so a process killed mid-save leaves the earlier
checkpoints intact; the next run removes the stray folder.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp

from dcgan_jax import state as state_lib
from dcgan_jax.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
# The config keys a checkpoint's arrays depend on: a mismatch cannot restore.
MODEL_KEYS = ("nz", "ngf", "ndf", "image_size", "d_spectral_norm", "d_batch_norm")


def _ocp():
  import orbax.checkpoint as ocp  # noqa: PLC0415 (heavy; only checkpointing needs it)
  return ocp


class Checkpoints:
  """The step folders of one directory (an orbax ``CheckpointManager``).

  Args:
    directory: the folder of step folders (``WORKDIR/checkpoints``).
    max_to_keep: keep the newest N (None: all).
    read_only: never write or delete (sampling or starting from another run).
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

  def step_or_latest(self, step: int | None) -> int:
    """``step`` if it was saved, else the latest; ``CheckpointError`` if there is none."""
    steps = self.all_steps()
    if step is None and steps:
      return steps[-1]
    if step is None or step not in steps:
      raise CheckpointError(f"no checkpoint{'' if step is None else f' for step {step}'} in "
                            f"{self.directory} (steps there: {steps}).")
    return step

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state, config, progress: dict) -> str:
    """Starts saving the host ``state`` at its step; returns the step folder.

    The arrays are copied to host memory first (safe against the next step's
    buffer donation); the write finishes in the background (``wait``).
    """
    ocp = _ocp()
    step = int(state.step)
    tree = jax.device_get(flax.serialization.to_state_dict(state))
    self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        config=ocp.args.JsonSave(config.to_dict()),
        progress=ocp.args.JsonSave(progress)))
    return self.step_path(step)

  def restore(self, template, step: int):
    """The state saved at ``step``, shaped like ``template`` (``create_train_state``)."""
    ocp = _ocp()
    target = jax.device_get(flax.serialization.to_state_dict(template))
    tree = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target))).state
    return flax.serialization.from_state_dict(template, jax.tree_util.tree_map(jnp.asarray, tree))

  def config(self, step: int) -> dict[str, Any]:
    """The config (a dict) saved at ``step``."""
    return self._restore_json(step, "config")

  def progress(self, step: int) -> dict[str, Any]:
    """The progress facts saved at ``step``."""
    return self._restore_json(step, "progress")

  def _restore_json(self, step: int, item: str) -> dict[str, Any]:
    ocp = _ocp()
    return self._manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.JsonRestore()}))[item]

  def wait(self) -> None:
    """Blocks until the last save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions and releases the manager."""
    self._manager.close()


def locate(path: str) -> tuple[str, int | None]:
  """(checkpoints folder, step or None for the latest) of a workdir, its checkpoints
  folder or one step folder."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f"checkpoint path {path!r} does not exist: pass a workdir, its "
                          "checkpoints/ folder or a step folder in it.")
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    return os.path.join(path, CHECKPOINT_DIR), None
  name = os.path.basename(path)
  if name.isdigit() and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    return os.path.dirname(path), int(name)
  return path, None


def check_config(saved: dict[str, Any], config, where: str) -> None:
  """Raises ``CheckpointError`` if ``config``'s model sizes differ from the ``saved`` config's."""
  diff = {k: (saved[k], config[k]) for k in MODEL_KEYS if saved[k] != config[k]}
  if diff:
    raise CheckpointError(
        f"the checkpoint {where} was trained with other model sizes: "
        f"{', '.join(f'{k}={a} (config: {b})' for k, (a, b) in diff.items())}. "
        "Pass the checkpoint's values (e.g. --config.ngf=...) or use another workdir.")


def open_for_reading(path: str) -> tuple[Checkpoints, int]:
  """A read-only ``Checkpoints`` for ``path`` (see ``locate``) and its step."""
  directory, step = locate(path)
  ckpts = Checkpoints(directory, read_only=True)
  return ckpts, ckpts.step_or_latest(step)


def restore_or_init(ckpts: Checkpoints, state, config):
  """The state a training run starts from, and what its checkpoint recorded.

  The latest checkpoint of the run's own folder (resume), else
  ``config.init_from``'s (a new run from another's state), else ``state``.

  Returns:
    (host state, None for a fresh start or {'config', 'progress', 'message'}
    of the checkpoint, the message saying where the state comes from).
  """
  if (step := ckpts.latest_step()) is not None:
    return _restore_from(ckpts, step, state, config, "Resumed from step %d (%s).")
  if config.init_from:
    source, step = open_for_reading(config.init_from)
    with source:
      return _restore_from(source, step, state, config, "Initialised from step %d of %s.")
  return state, None


def _restore_from(source: Checkpoints, step: int, state, config, message: str):
  saved = {"config": source.config(step), "progress": source.progress(step),
           "message": message % (step, source.step_path(step))}
  check_config(saved["config"], config, source.step_path(step))
  return source.restore(state, step), saved


def restore_trained(config, workdir: str, hint: str):
  """A trained run's latest checkpoint (``init_from``'s when set), for sampling or scoring.

  Args:
    config: the current config.
    workdir: the run, unless ``config.init_from`` names another.
    hint: what to do when there is no checkpoint, appended to the error.

  Returns:
    (state, ``config`` with the checkpoint's model keys, dtype and
    ``ema_decay``, the checkpoint's folder).
  """
  import ml_collections  # noqa: PLC0415
  try:
    ckpts, step = open_for_reading(config.init_from or workdir)
  except CheckpointError as e:
    raise CheckpointError(f"{e} {hint}") from e
  with ckpts:
    saved = ckpts.config(step)
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.update({k: saved[k] for k in (*MODEL_KEYS, "dtype", "ema_decay")})
    state = ckpts.restore(state_lib.create_train_state(cfg, jax.random.PRNGKey(0)), step)
  return state, cfg, ckpts.step_path(step)
