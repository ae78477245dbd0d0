"""What a person running ``main.py`` reads: the project's lines, the libraries quiet.

``quiet_libraries`` keeps INFO lines from this project only (orbax, clu, JAX
and absl share absl's logger, so records are told apart by their source file),
silences TensorFlow's C++ logs, and prints ``HH:MM:SS message``; ``--verbose``
brings everything back in absl's format. The run's own lines are made here.
"""

from __future__ import annotations

import logging
import os
import time

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_MAIN = os.path.join(os.path.dirname(_PACKAGE), "main.py")


def _ours(path: str) -> bool:
  path = os.path.abspath(path)
  return path.startswith(_PACKAGE + os.sep) or path == _MAIN


class _ProjectOnly(logging.Filter):
  """Keeps WARNING and above from anywhere, lower levels from this project only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _ours(record.pathname)


class _Plain(logging.Formatter):
  """``HH:MM:SS message``, with ``WARNING:`` / ``ERROR:`` in front where it applies."""

  def format(self, record: logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    tag = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
    text = f"{stamp} {tag}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def quiet_libraries(verbose: bool = False, env=os.environ) -> None:
  """Keeps the console to the project's own lines (``verbose``: change nothing).

  Call it before TensorFlow is imported (its C++ logs read the environment
  once) and after absl has set up logging (``app.run`` does).
  """
  # TensorFlow only decodes and resizes images here, which its oneDNN kernels
  # do not do; with them on, its import prints a notice that no log level
  # silences. Off in both modes, so the modes differ in their logs alone.
  env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  if verbose:
    return
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging as absl_logging  # noqa: PLC0415
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_ProjectOnly())
  handler.setFormatter(_Plain())


def duration(secs: float) -> str:
  """``42s``, ``3m05s``, ``2h07m``."""
  secs = int(round(secs))
  h, rem = divmod(secs, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Clock:
  """The run's one clock: img/s between log steps and the ETA, from the end of the first call."""

  def __init__(self, total: int, batch_size: int):
    self.total, self.batch_size = total, batch_size
    self.start_step = self._t0 = self._last_step = self._t_last = None

  def start(self, step: int) -> None:
    self.start_step = self._last_step = step
    self._t0 = self._t_last = time.perf_counter()

  def secs_per_step(self) -> float | None:
    """Seconds per step since the start, up to the last ``lap`` (None before one)."""
    if self._last_step is None or self._last_step <= self.start_step:
      return None
    return (self._t_last - self._t0) / (self._last_step - self.start_step)

  def lap(self, step: int) -> tuple[float | None, float | None]:
    """(img/s since the last lap, seconds left); None where nothing was timed yet."""
    now, rate = time.perf_counter(), None
    if self._last_step is not None and step > self._last_step:
      rate = (step - self._last_step) * self.batch_size / (now - self._t_last)
      self._last_step, self._t_last = step, now
    per_step = self.secs_per_step()
    return rate, None if per_step is None else (self.total - step) * per_step


def print_header(config, workdir: str, inp, start: int, plan, fid_on: bool,
                 origin: str) -> None:
  """The lines a run starts with: where, from what, the data, the devices, the steps."""
  import jax  # noqa: PLC0415

  from dcgan_jax import conv_ops, parallel  # noqa: PLC0415
  host_batch, device_batch = parallel.split_batch(config.batch_size)
  fid = ("FID off" if not fid_on else "FID every " + (
      str(plan.fid_every) if plan.fid_every > 0 else "N steps, N planned to keep it "
      "within 10% of the training time"))
  epochs = (plan.total - start) / inp.steps_per_epoch
  for line in (
      f"Training into {workdir}. {origin}",
      f"Data: {inp.description}; {inp.steps_per_epoch} steps per epoch",
      f"Devices: {jax.device_count()} x {jax.devices()[0].platform} on "
      f"{jax.process_count()} host(s); {config.parallel}, conv_impl "
      f"{conv_ops.resolve(config.conv_impl)}, steps_per_call {config.steps_per_call}",
      f"Batch: {config.batch_size} ({host_batch} per host, {device_batch} per device)",
      f"Steps: {start} -> {plan.total} ({epochs:.3g} epochs); {plan.describe(fid)}"):
    logging.getLogger("absl").info("%s", line)


def step_line(done: int, total: int, scalars: dict, imgs_per_sec: float | None,
              eta_secs: float | None) -> str:
  """One log step: step/total, img/s, ETA, the losses and D's outputs."""
  parts = [f"step {done}/{total}"]
  if imgs_per_sec is not None:
    parts.append(f"{imgs_per_sec:.1f} img/s")
  if eta_secs is not None:
    parts.append(f"ETA {duration(eta_secs)}")
  names = (("loss_d", "loss_d"), ("loss_g", "loss_g"), ("D(x)", "d_real"),
           ("D(G(z))", "d_fake"), ("logit(x)", "logit_real"), ("logit(G(z))", "logit_fake"))
  parts += [f"{label} {scalars[k]:.3f}" for label, k in names if k in scalars]
  for d_step, g_step in (("d_fake", "d_fake_g"), ("logit_fake", "logit_fake_g")):
    if g_step in scalars:  # D's output on G(z) again, in the G step (after D's update)
      g = f"{scalars[g_step]:.3f}"
      parts.append(f"(G step {g})" if d_step in scalars else f"{g_step} {g}")
  return "  ".join(parts)


def done_line(done: int, secs: float, last_save: str | None, samples: str) -> str:
  where = f"; last checkpoint {last_save}" if last_save else ""
  return f"Done: step {done} in {duration(secs)}{where}; sample grids in {samples}"
