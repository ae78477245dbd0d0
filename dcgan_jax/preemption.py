"""Stopping cleanly on SIGTERM / SIGINT (preemption, Ctrl-C).

The first signal sets a flag: training saves a checkpoint after the current
call and exits 0. A second exits at once (128 + signal). Hosts agree on the
stop where they sync (``should_stop(sync=True)``), so all save the same step.
``catch_early``, called by ``main.py`` before its imports, records a signal
that comes during start-up for the ``StopSignal`` installed later.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _exit(code: int) -> None:  # a seam for tests
  os._exit(code)


_early: list[int] = []  # signals caught by catch_early before a StopSignal took over
_defaults: dict[int, object] = {}  # the handlers catch_early replaced


def _catch(signum, frame):
  del frame
  if _early:
    _exit(128 + signum)
  _early.append(signum)


def catch_early(signals=SIGNALS) -> None:
  """Records SIGTERM/SIGINT from now on until a ``StopSignal`` is installed."""
  if threading.current_thread() is threading.main_thread():
    for s in signals:
      _defaults.setdefault(s, signal.signal(s, _catch))


def release_early() -> None:
  """Puts back the handlers ``catch_early`` replaced, where no training takes over.

  A signal it recorded is then delivered as it would have been (``--mode=eval``
  and the other modes have nothing to save).
  """
  for s, handler in _defaults.items():
    signal.signal(s, handler)
  _defaults.clear()
  while _early:
    signal.raise_signal(_early.pop())


class StopSignal:
  """A context that turns SIGTERM/SIGINT into a stop request.

  Use ``with StopSignal() as stop: ... if stop.should_stop(sync): ...`` (or
  ``install()`` / ``uninstall()``).
  Outside the main thread (where Python cannot install handlers) it installs
  nothing and never requests a stop.
  """

  def __init__(self, signals=SIGNALS):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self.received: int | None = None   # the first signal's number

  @property
  def requested(self) -> bool:
    return self.received is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.requested else ""

  def _handle(self, signum, frame):
    del frame
    if self.received is None:
      self.received = signum
      logging.warning("Received %s: saving a checkpoint at the next step boundary "
                      "and exiting (send it again to exit at once).",
                      signal.Signals(signum).name)
      return
    logging.warning("Received %s again: exiting now, without saving.",
                    signal.Signals(signum).name)
    _exit(128 + signum)

  def install(self) -> StopSignal:
    """Installs the handlers (main thread only; elsewhere a no-op).

    A signal ``catch_early`` recorded counts as received here.
    """
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        previous = signal.signal(s, self._handle)
        # After training, a signal does what it did before catch_early.
        self._previous[s] = _defaults.get(s, previous) if previous is _catch else previous
      if _early and self.received is None:
        self.received = _early.pop()
        logging.warning("Received %s during start-up: stopping before training (send it "
                        "again to exit at once).", self.name)
    return self

  def uninstall(self) -> None:
    """Puts the previous handlers back."""
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

  def __enter__(self) -> StopSignal:
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def should_stop(self, sync: bool = True) -> bool:
    """Whether the loop should stop now.

    Args:
      sync: on multi-host runs, agree with the other hosts (a tiny
        all-gather; every host must call this with the same ``sync`` at the
        same step). Without it a multi-host run never stops here, so that no
        host leaves the others waiting in a collective.

    Returns:
      True when this host (or, synchronised, any host) got a signal.
    """
    import jax  # noqa: PLC0415
    if jax.process_count() == 1:
      return self.requested
    if not sync:
      return False
    from jax.experimental import multihost_utils  # noqa: PLC0415
    flags = multihost_utils.process_allgather(int(self.requested))
    return bool(flags.any())
