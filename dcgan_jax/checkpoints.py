"""Checkpoints: saving and restoring the whole training state with orbax.

A checkpoint is one step folder ``WORKDIR/checkpoints/<step>/`` with two items:
  * ``state``: the unreplicated ``GANState`` as a tree of arrays: the step,
    the noise key, and for each net its params, BatchNorm running statistics
    and Adam state (count, mu, nu). The input position needs no entry of its
    own: batch k is a pure function of k (see ``input_pipeline``), so the
    step is the position.
  * ``config``: the run's config as JSON, so generate can rebuild the models.

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
from absl import logging

CHECKPOINT_DIR = "checkpoints"
# The model keys a checkpoint's arrays depend on: a mismatch cannot restore.
MODEL_KEYS = ("nz", "ngf", "ndf", "image_size")


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
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "config"))

  def all_steps(self) -> list[int]:
    """The complete checkpoints' steps, as on disk now."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state, config) -> str:
    """Starts saving ``state`` (unreplicated) at step ``state.step``.

    The arrays are copied to host memory before this returns; the write
    finishes in the background (``wait``).

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
        config=ocp.args.JsonSave(config.to_dict())))
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
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    tree = jax.tree_util.tree_map(jnp.asarray, restored.state)
    return flax.serialization.from_state_dict(template, tree)

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
  diff = {k: (saved.get(k), config[k]) for k in MODEL_KEYS if saved.get(k) != config[k]}
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
  """The state a training run starts from.

  The latest checkpoint of the run's own folder if there is one (resume),
  else ``config.init_from``'s checkpoint if set, else ``state`` (fresh).

  Args:
    ckpts: the run's own checkpoints (closed here if restoring fails).
    state: a freshly created state (the template).
    config: the run's config (init_from, model sizes).

  Returns:
    The state to train from (unreplicated).
  """
  try:
    return _restore_or_init(ckpts, state, config)
  except BaseException:
    ckpts.close()  # no orbax threads left behind by a failed start
    raise


def _restore_or_init(ckpts: Checkpoints, state, config):
  if (step := ckpts.latest_step()) is not None:
    source, message = ckpts, "Resumed from step %d (%s)."
  elif config.init_from:
    (source, step), message = open_for_reading(config.init_from), "Initialised from step %d of %s."
  else:
    return state
  check_config(source.config(step), config, source.step_path(step))
  state = source.restore(state, step)
  logging.info(message, step, source.step_path(step))
  if source is not ckpts:
    source.close()
  return state
