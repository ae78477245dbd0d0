"""Stopping cleanly on numerical and file-system faults.

* ``FiniteGuard``: NaN/Inf in a loss stops training, naming the first bad
  step, without a host sync per step. Each step's metrics are only
  remembered (device arrays); a check reads the accumulated sums, which are
  non-finite as soon as one step was, and only then looks at single steps.
  Training checks at every log, sample grid and checkpoint, so no summary,
  grid or checkpoint is ever written from a non-finite state.
* ``tree_is_finite``: the state itself, checked before a checkpoint is saved
  (a finite loss can still come with a NaN update).
* ``check_workdir``: an unwritable workdir fails at start, naming the folder.
* ``checkpoint_writes``: a checkpoint write that fails (disk full, I/O
  error; orbax reports these as ValueError or OSError, possibly one save
  later since saves are asynchronous) stops training with one clear error.
  Orbax writes a step into a temporary folder and renames it when complete,
  so the checkpoints already there stay intact and a rerun resumes from them.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


class NonFiniteError(FloatingPointError):
  """A loss or the state became NaN or Inf; the message names the step."""


def _host_scalars(metrics: dict) -> dict[str, float]:
  """{'d': Collection, ...} (device) -> {'loss_d': float, ...} (host sync)."""
  return {k: float(np.asarray(v).reshape(-1)[0])
          for m in metrics.values() for k, v in m.compute().items()}


class FiniteGuard:
  """Finds the first training step whose metrics are not finite.

  ``add`` costs nothing on the device; ``check`` syncs once.

  Args:
    unreplicate: maps a step's metrics (as ``add`` got them) to a single
      copy, e.g. ``parallel.unreplicate`` for pmap outputs; run only when a
      check has to look at single steps.
    before_raise: run before raising, e.g. waiting for an asynchronous save
      of an earlier, finite state to finish (its errors are only logged).
  """

  def __init__(self, unreplicate=lambda metrics: metrics, before_raise=None):
    self._pending: list[tuple[int, dict]] = []
    self._unreplicate = unreplicate
    self._before_raise = before_raise

  def add(self, step: int, metrics: dict) -> None:
    """Remembers the metrics of ``step`` (a dict of clu collections)."""
    self._pending.append((step, metrics))

  def check(self, accumulated: dict | None = None, hint: str = "") -> None:
    """Raises ``NonFiniteError`` if a step added since the last check was bad.

    Args:
      accumulated: the merged metrics of (at least) those steps; when given,
        single steps are only read if these are non-finite.
      hint: appended to the error (e.g. the config's learning rates).
    """
    pending, self._pending = self._pending, []
    if not pending:
      return
    if accumulated and all(
        math.isfinite(v) for v in _host_scalars(accumulated).values()):
      return
    for step, metrics in pending:
      values = _host_scalars(self._unreplicate(metrics))
      bad = {k: v for k, v in values.items() if not math.isfinite(v)}
      if bad:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        _run_quietly(self._before_raise)
        raise NonFiniteError(
            f"non-finite loss at training step {step} ({shown}); training stopped. "
            "Nothing from this step on was saved: the last checkpoint, if any, "
            f"is intact and restores.{hint}")


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def tree_is_finite(tree: Any) -> bool:
  """Whether every float array of ``tree`` is free of NaN and Inf."""
  return bool(_all_finite(tree))


def _run_quietly(fn) -> None:
  if fn is None:
    return
  try:
    fn()
  except Exception as e:  # noqa: BLE001 (a NonFiniteError is on its way: report, go on)
    logging.error("while stopping: %s: %s", type(e).__name__, e)


def check_state_finite(state: Any, step: int, hint: str = "", before_raise=None) -> None:
  """Raises ``NonFiniteError`` if the (unreplicated) ``state`` holds NaN/Inf.

  ``before_raise`` runs first (see ``FiniteGuard``).
  """
  if not tree_is_finite(state):
    _run_quietly(before_raise)
    raise NonFiniteError(
        f"the training state holds NaN or Inf after step {step} although its "
        "losses were finite; training stopped and it was not saved. The last "
        f"checkpoint, if any, is intact and restores.{hint}")


def check_workdir(workdir: str) -> None:
  """Creates ``workdir`` if needed and proves it writable, or fails naming it.

  Raises:
    OSError: (of the original kind) saying which folder and why, and what to do.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_") as f:
      f.write(b"ok")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise type(e)(
        e.errno, f"workdir {workdir!r} is not a writable folder ({e.strerror or e}); "
        "pass --workdir=PATH naming a folder you can write to") from e


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed; the earlier checkpoints are intact."""


@contextlib.contextmanager
def checkpoint_writes(ckpts, step: int):
  """Runs a checkpoint save/wait/close, turning a failure into one clear error.

  Args:
    ckpts: the run's ``checkpoints.Checkpoints`` (``directory``, ``all_steps``).
    step: the training step being saved (or just done).

  Raises:
    CheckpointWriteError: naming the folder, the cause and the step a rerun
      resumes from.
  """
  try:
    yield
  except (NonFiniteError, KeyboardInterrupt):
    raise
  except Exception as e:  # noqa: BLE001 (orbax wraps I/O errors in several kinds)
    cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    full = "no space left on device" in str(e).lower() or getattr(e, "errno", None) == 28
    try:
      steps = ckpts.all_steps()
    except Exception:  # noqa: BLE001 (the folder itself may be gone)
      steps = []
    resume = (f"the checkpoints there (steps {steps}) are intact: a rerun with the same "
              f"workdir resumes from step {steps[-1]}" if steps else
              "there is no earlier checkpoint: a rerun starts from step 0")
    raise CheckpointWriteError(
        28 if full else getattr(e, "errno", None) or 5,
        f"writing a checkpoint (noticed at step {step}) to {ckpts.directory} failed"
        f"{' (disk full)' if full else ''}: {cause[:500]}. Training stopped; {resume}. "
        f"{'Free disk space' if full else 'Fix the folder'} (or pass another --workdir) "
        "and rerun.") from e
