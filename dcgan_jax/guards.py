"""Stopping cleanly on NaN/Inf and on failed checkpoint writes, losing nothing.

The step records the first step whose losses were not finite
(``FirstNonFinite``); the loop checks it wherever it reads the metrics (every
log, grid and checkpoint) and the state itself before a save, so nothing is
ever written from a non-finite state. A checkpoint write that fails (orbax
reports it as ValueError or OSError, maybe one save later since saves are
asynchronous) stops training with one error; orbax renames a step folder only
once complete, so the checkpoints already there restore.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcgan_jax.errors import RunStopped


class NonFiniteError(RunStopped, FloatingPointError):
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


@contextlib.contextmanager
def closing(resource):
  """``resource.close()`` on the way out; only logged when an error is already on its way."""
  try:
    yield resource
  except BaseException:
    run_quietly(resource.close)
    raise
  resource.close()


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


class CheckpointWriteError(RunStopped, OSError):
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
  except (OSError, ValueError) as e:  # how orbax and tensorstore report a failed write
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
