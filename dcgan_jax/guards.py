"""Stopping cleanly on numerical and file-system faults.

* ``FirstNonFinite``: NaN/Inf in a loss stops training, naming the first bad
  step, without a host sync per step: the step itself records the first
  step whose losses were not finite, with those losses, in the metrics it
  accumulates; ``check_finite`` reads it where the loop reads the metrics.
  Training checks at every log, sample grid and checkpoint, so no summary,
  grid or checkpoint is ever written from a non-finite state.
* ``tree_is_finite``: the state itself, checked before a checkpoint is saved
  (a finite loss can still come with a NaN update).
* ``check_workdir``: an unwritable workdir fails at start, naming the folder.
* ``lock_workdir``: a second training run on a workdir whose run is still
  going fails at start, naming the live process.
* ``checkpoint_writes``: a checkpoint write that fails (disk full, I/O
  error; orbax reports these as ValueError or OSError, possibly one save
  later since saves are asynchronous) stops training with one clear error.
  Orbax writes a step into a temporary folder and renames it when complete,
  so the checkpoints already there stay intact and a rerun resumes from them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import tempfile
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


class NonFiniteError(FloatingPointError):
  """A loss or the state became NaN or Inf; the message names the step."""


@flax.struct.dataclass
class FirstNonFinite:
  """The first step whose losses were not finite, tracked inside the step.

  Attributes:
    step: int32, the (1-based) step; 0 while every loss was finite.
    values: {name: float32} the losses of that step.
  """

  step: jax.Array
  values: dict

  @classmethod
  def empty(cls, names) -> FirstNonFinite:
    return cls(jnp.zeros((), jnp.int32), {n: jnp.zeros((), jnp.float32) for n in names})

  def update(self, step, values: dict, ran: dict) -> FirstNonFinite:
    """Records ``step`` if it is the first with a non-finite value that ran.

    Args:
      step: the step just done (1-based, traced).
      values: {name: scalar} this step's losses.
      ran: {name: bool} whether the update behind each value ran.
    """
    bad = jnp.any(jnp.stack([ran[k] & ~jnp.isfinite(v) for k, v in values.items()]))
    first = bad & (self.step == 0)
    return FirstNonFinite(
        jnp.where(first, step, self.step).astype(jnp.int32),
        {k: jnp.where(first, jnp.where(ran[k], v, 0.0), self.values[k]).astype(jnp.float32)
         for k, v in values.items()})


def check_finite(first: FirstNonFinite, hint: str = "", before_raise=None) -> None:
  """Raises ``NonFiniteError`` naming the step if ``first`` (host copy) holds one.

  Args:
    first: a ``FirstNonFinite`` read from the devices.
    hint: appended to the error (e.g. the config's learning rates).
    before_raise: run before raising, e.g. waiting for an asynchronous save
      of an earlier, finite state to finish (its errors are only logged).
  """
  step = int(first.step)
  if not step:
    return
  bad = {k: float(v) for k, v in first.values.items() if not math.isfinite(float(v))}
  shown = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
  run_quietly(before_raise)
  raise NonFiniteError(
      f"non-finite loss at training step {step} ({shown}); training stopped. "
      "Nothing from this step on was saved: the last checkpoint, if any, "
      f"is intact and restores.{hint}")


def tree_is_finite(tree: Any) -> bool:
  """Whether every float array of ``tree`` (host or device) is free of NaN and Inf."""
  return all(bool(np.isfinite(x).all()) for x in map(np.asarray, jax.tree_util.tree_leaves(tree))
             if np.issubdtype(x.dtype, np.inexact))


def run_quietly(fn) -> None:
  if fn is None:
    return
  try:
    fn()
  except Exception as e:  # noqa: BLE001 (a NonFiniteError is on its way: report, go on)
    logging.error("while stopping: %s: %s", type(e).__name__, e)


def check_state_finite(state: Any, step: int, hint: str = "", before_raise=None) -> None:
  """Raises ``NonFiniteError`` if the (unreplicated) ``state`` holds NaN/Inf.

  ``before_raise`` runs first (see ``check_finite``).
  """
  if not tree_is_finite(state):
    run_quietly(before_raise)
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


class WorkdirInUseError(RuntimeError):
  """Another live training run holds the workdir."""


LOCK_FILE = ".lock"


class WorkdirLock:
  """Held by ``lock_workdir``; ``announce`` writes who holds it into the file."""

  def __init__(self, fd: int | None):
    self._fd = fd

  def announce(self) -> None:
    """Names this process in the lock file (for a second run's error message)."""
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)


@contextlib.contextmanager
def lock_workdir(workdir: str, holder: bool = True):
  """Holds ``WORKDIR/.lock`` while a training run uses the workdir.

  An advisory ``flock``: the OS releases it when the process ends, however it
  ends, so a crashed run leaves no stale lock. Taking it writes nothing; the
  run ``announce``s itself once it is going to train.

  Args:
    workdir: the run's folder (it exists: ``check_workdir``).
    holder: whether this process takes the lock. The hosts of one run share
      its workdir, so only one of them (the chief) does.

  Yields:
    A ``WorkdirLock``.

  Raises:
    WorkdirInUseError: naming the live process that holds it, and what to do.
  """
  if not holder:
    yield WorkdirLock(None)
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path) as f:
        held = f.read().strip()
      who = json.loads(held) if held.startswith("{") else {}
      raise WorkdirInUseError(
          f"workdir {workdir!r} is in use by another training run (pid "
          f"{who.get('pid', '?')} on host {who.get('host', '?')}, started "
          f"{who.get('started', '?')}). Wait for it to finish or stop it, or pass another "
          "--workdir.") from None
    yield WorkdirLock(fd)
  finally:
    os.close(fd)  # releases the lock


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
