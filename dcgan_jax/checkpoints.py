"""Saving and restoring the whole training state with orbax.

A checkpoint is a step folder ``WORKDIR/checkpoints/<step>/`` with three items:
``state`` (the ``GANState``'s arrays: its field names are the format),
``config`` (the run's config as JSON, so generate can rebuild the models) and
``progress`` (facts the config does not give: the steps per epoch of the data,
so a rerun of a finished run stops before loading any). The data position is
the step itself: batch k is a pure function of k.

Saves are asynchronous and atomic: orbax writes ``<step>.orbax-checkpoint-tmp-*``
and renames it when complete, so a process killed mid-save leaves the earlier
checkpoints intact; the next run removes the stray folder. A checkpoint that
cannot be read all the same (a damaged disk, a half-copied workdir) is passed
over for the newest that restores (``newest_readable``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
from absl import logging

from dcgan_jax import fs, parallel
from dcgan_jax import state as state_lib
from dcgan_jax.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
# The config keys a checkpoint's arrays depend on: a mismatch cannot restore.
MODEL_KEYS = ("nz", "ngf", "ndf", "image_size", "g_upsample", "d_spectral_norm",
              "d_batch_norm")
# Keys added after checkpoints were written, at the value those checkpoints had.
ADDED_KEYS = {"g_upsample": "transpose", "ema_kimg": 0.0}
UNREADABLE = ".unreadable"  # the suffix of a step folder set aside


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
    self.directory, self.read_only = fs.absolute(directory), read_only
    # Not orbax's read_only, which logs warnings on every open: reading opens
    # nothing, deletes nothing and keeps everything.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep, create=not read_only,
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

  def step_path(self, step: int) -> str:
    return fs.join(self.directory, step)

  def save(self, state, config, progress: dict) -> str:
    """Starts saving the host ``state`` at its step; returns the step folder.

    The arrays are copied to host memory first (safe against the next step's
    buffer donation); the write finishes in the background (``wait``).
    """
    ocp = _ocp()
    assert not self.read_only, "a read-only Checkpoints saves nothing"
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
    return {**ADDED_KEYS, **self._restore_json(step, "config")}

  def progress(self, step: int) -> dict[str, Any]:
    """The progress facts saved at ``step``."""
    return self._restore_json(step, "progress")

  def _restore_json(self, step: int, item: str) -> dict[str, Any]:
    ocp = _ocp()
    return self._manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.JsonRestore()}))[item]

  def set_aside(self, step: int) -> str:
    """Renames the step folder ``<step>.unreadable`` (or ``.unreadable.N``); its new path."""
    path, n = self.step_path(step), 1
    while fs.path(target := f"{path}{UNREADABLE}{f'.{n}' if n > 1 else ''}").exists():
      n += 1
    fs.path(path).rename(target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Blocks until the last save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions and releases the manager."""
    self._manager.close()


def locate(path: str) -> tuple[str, int | None]:
  """(checkpoints folder, step or None for the latest) of a workdir, its checkpoints
  folder or one step folder."""
  path = fs.absolute(path)
  p = fs.path(path, "checkpoint path")
  try:
    found = p.exists()
  except Exception as e:  # noqa: BLE001 (each filesystem raises its own kinds)
    raise CheckpointError(f"checkpoint path {path!r} cannot be read "
                          f"({fs.unreachable(path, e)}).") from e
  if not found or not p.is_dir():
    raise CheckpointError(f"checkpoint path {path!r} does not exist: pass a workdir, its "
                          "checkpoints/ folder or a step folder in it.")
  if (p / CHECKPOINT_DIR).is_dir():
    return fs.join(path, CHECKPOINT_DIR), None
  if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists():
    return path.rstrip("/").rsplit("/", 1)[0], int(p.name)
  return path, None


def check_config(saved: dict[str, Any], config, where: str) -> None:
  """Raises ``CheckpointError`` if ``config``'s model sizes differ from the ``saved`` config's."""
  diff = {k: (saved[k], config[k]) for k in MODEL_KEYS if saved[k] != config[k]}
  if diff:
    raise CheckpointError(
        f"the checkpoint {where} was trained with other model sizes: "
        f"{', '.join(f'{k}={a} (config: {b})' for k, (a, b) in diff.items())}. "
        "Pass the checkpoint's values (e.g. --config.ngf=...) or use another workdir.")
  if state_lib.ema_on(saved) != state_lib.ema_on(config):
    raise CheckpointError(
        f"the checkpoint {where} was trained {'with' if state_lib.ema_on(saved) else 'without'}"
        " an EMA of G (ema_decay or ema_kimg), the config "
        f"{'without' if state_lib.ema_on(saved) else 'with'} one. Set them as the checkpoint "
        "was trained, or use another workdir.")


def _quiet_closed_loop() -> None:
  """Drops the "Event loop is closed" errors a failed restore leaves behind.

  Orbax closes its event loop at the first failed read while tensorstore's
  other reads of that checkpoint still complete into it, each reporting an
  unraisable RuntimeError: dozens of tracebacks that say nothing more.
  """
  previous = sys.unraisablehook
  if getattr(previous, "quiet_closed_loop", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)
  hook.quiet_closed_loop = True
  sys.unraisablehook = hook


def _why(e: BaseException) -> str:
  """An error's first line, short enough for a log line."""
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def newest_readable(ckpts: Checkpoints, restore: Callable[[int], Any], *,
                    only: int | None = None) -> tuple[int, Any] | None:
  """(step, ``restore(step)``) of the newest checkpoint that restores; None if none exists.

  A newer checkpoint whose data cannot be read (orbax and tensorstore report
  a damaged or missing file, a missing item or arrays of another shape as
  ValueError or FileNotFoundError) is named in a warning and, unless ``ckpts``
  is read-only, set aside as ``<step>.unreadable`` (never deleted). Other
  errors (a permission, memory, a bug) and ``CheckpointError`` (other model
  sizes: a person's choice) are raised as they are; ``only`` tries that step.
  The hosts of a run agree on each checkpoint, and only the first renames.

  Raises:
    CheckpointError: listing each checkpoint and why, when none restores;
      nothing is then renamed.
  """
  failed, error = [], None
  for step in [only] if only is not None else reversed(ckpts.all_steps()):
    try:
      result, why = restore(step), None
    except (ValueError, FileNotFoundError) as e:
      if isinstance(e, CheckpointError):
        raise
      _quiet_closed_loop()
      result, why, error = None, _why(e), e
    if not parallel.all_hosts(why is None):
      failed.append((step, why or "cannot be read on another host"))
      continue
    for bad, bad_why in failed:
      aside = None
      if not ckpts.read_only and jax.process_index() == 0:
        aside = ckpts.set_aside(bad)
      logging.warning("Checkpoint %s cannot be read (%s)%s; using step %d.",
                      ckpts.step_path(bad), bad_why, f"; moved to {aside}" if aside else "",
                      step)
    parallel.all_hosts(True)  # the others wait for the renames
    return step, result
  if failed:
    raise CheckpointError(
        f"no checkpoint in {ckpts.directory} can be read: "
        + "; ".join(f"step {s}: {why}" for s, why in failed)
        + ". Nothing was changed: move the damaged step folders away, or pass another "
        "--workdir.") from error
  return None


def open_for_reading(path: str) -> tuple[Checkpoints, int | None]:
  """A read-only ``Checkpoints`` for ``path`` (see ``locate``) and the step it names."""
  directory, step = locate(path)
  ckpts = Checkpoints(directory, read_only=True)
  try:
    if not ckpts.all_steps():
      raise CheckpointError(f"no checkpoint in {directory}.")
  except BaseException:
    ckpts.close()
    raise
  return ckpts, step


def restore_or_init(ckpts: Checkpoints, state, config):
  """The state a training run starts from, and what its checkpoint recorded.

  The newest readable checkpoint of the run's own folder (resume), else
  ``config.init_from``'s (a new run from another's state), else ``state``.

  Returns:
    (host state, None for a fresh start or {'config', 'progress', 'message'}
    of the checkpoint, the message saying where the state comes from).
  """
  def restore(source: Checkpoints, message: str):
    def one(step: int):
      saved = {"config": source.config(step), "progress": source.progress(step),
               "message": message % (step, source.step_path(step))}
      check_config(saved["config"], config, source.step_path(step))
      return source.restore(state, step), saved
    return one

  found = newest_readable(ckpts, restore(ckpts, "Resumed from step %d (%s)."))
  if found is None and config.init_from:
    source, step = open_for_reading(config.init_from)
    with source:
      found = newest_readable(source, restore(source, "Initialised from step %d of %s."),
                              only=step)
  return found[1] if found else (state, None)


def restore_trained(config, workdir: str, hint: str):
  """A trained run's newest readable checkpoint (``init_from``'s when set), for sampling.

  Args:
    config: the current config.
    workdir: the run, unless ``config.init_from`` names another.
    hint: what to do when there is no checkpoint, appended to the error.

  Returns:
    (state, ``config`` with the checkpoint's model keys, dtype and EMA keys,
    the checkpoint's folder).
  """
  import ml_collections  # noqa: PLC0415
  try:
    ckpts, step = open_for_reading(config.init_from or workdir)
  except CheckpointError as e:
    raise CheckpointError(f"{e} {hint}") from e

  def restore(step: int):
    saved = ckpts.config(step)
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.update({k: saved[k] for k in (*MODEL_KEYS, "dtype")})
    cfg.ema_decay, cfg.ema_kimg = saved["ema_decay"], saved["ema_kimg"]
    return ckpts.restore(state_lib.create_train_state(cfg, jax.random.PRNGKey(0)), step), cfg

  with ckpts:
    step, (state, cfg) = newest_readable(ckpts, restore, only=step)
  return state, cfg, ckpts.step_path(step)
