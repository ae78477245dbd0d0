"""What a person running ``main.py`` reads: the project's lines, libraries quiet.

By default (``quiet_libraries()``, which ``main.py`` calls first):
  * Python log records below WARNING are kept only when they come from this
    project (``dcgan_jax/`` or ``main.py``). orbax, clu, JAX and absl log
    through the same absl logger as the project, so the filter goes by each
    record's origin (its source file), not by logger name. Warnings and errors
    of every origin stay.
  * TensorFlow's and XLA's C++ INFO and WARNING lines are off
    (``TF_CPP_MIN_LOG_LEVEL=2``, which must be set before TensorFlow loads;
    a value the user set wins), and so is the notice TensorFlow prints about
    its oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS=0``, in both modes: TensorFlow
    only decodes images here).
  * Lines are ``HH:MM:SS message``; warnings and errors say so in front.
``main.py --verbose`` brings everything back in absl's own format.

The training loop's lines come from ``header``, ``step_line`` and ``done_line``.
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


def header(*, workdir: str, data: str, steps_per_epoch: int, start: int, total: int,
           origin: str, devices: str, batch: str, cadence: str) -> list[str]:
  """The lines a run starts with: where, from what, the data, devices and steps."""
  epochs = (total - start) / steps_per_epoch
  return [f"Training into {workdir}. {origin}",
          f"Data: {data}; {steps_per_epoch} steps per epoch",
          f"Devices: {devices}",
          f"Batch: {batch}",
          f"Steps: {start} -> {total} ({epochs:.3g} epochs); {cadence}"]


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
