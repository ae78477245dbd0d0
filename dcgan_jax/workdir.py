"""The workdir: checked writable before anything is built, and locked while a run trains.

A local workdir is locked with an advisory ``flock`` on ``WORKDIR/.lock``,
which the OS releases however the process ends. A bucket has no locks: there
the run writes ``.lock`` as a note naming itself, warns when it finds another
run's note, and deletes its own at the end (one run per bucket workdir is
then up to the person starting them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

from absl import logging

from dcgan_jax import fs
from dcgan_jax.errors import WorkdirError

LOCK_FILE = ".lock"


def check(workdir: str) -> None:
  """Creates ``workdir`` if needed and proves it writable; ``WorkdirError`` naming it if not."""
  p = fs.path(workdir, "workdir")
  try:
    if p.exists() and not p.is_dir():
      raise WorkdirError(f"workdir {workdir!r} is a file, not a folder; pass --workdir=PATH "
                         "naming a folder (it is created if missing).")
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".write_test_{socket.gethostname()}_{os.getpid()}"
    probe.write_bytes(b"ok")
    probe.unlink()
  except WorkdirError:
    raise
  except Exception as e:  # noqa: BLE001 (each filesystem raises its own kinds)
    raise WorkdirError(f"workdir {workdir!r} is not a writable folder "
                       f"({fs.unreachable(workdir, e)}); or pass another --workdir.") from e


def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(text: str) -> str:
  who = json.loads(text) if text.strip().startswith("{") else {}
  return (f"pid {who.get('pid', '?')} on host {who.get('host', '?')}, started "
          f"{who.get('started', '?')}")


class Lock:
  """Held by ``lock``; ``announce`` writes who holds it into the lock file."""

  def __init__(self, fd: int | None = None, note=None):
    self._fd, self._note, self.written = fd, note, None

  def announce(self) -> None:
    """Names this process in the lock file, for a second run's message."""
    text = json.dumps(_holder())
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, text.encode(), 0)
    elif self._note is not None:
      self._note.write_text(text)
      self.written = text


@contextlib.contextmanager
def claim(workdir: str, chief: bool):
  """``check`` on every host and ``lock`` on the chief; every host fails if one does.

  The hosts of one run share its workdir: a host that goes on while another
  stopped would wait for it in the next collective.
  """
  from dcgan_jax import parallel  # noqa: PLC0415
  with contextlib.ExitStack() as stack:
    try:
      check(workdir)
      held, failure = stack.enter_context(lock(workdir, holder=chief)), None
    except WorkdirError as e:
      held, failure = None, e
    if not parallel.all_hosts(failure is None):
      raise failure or WorkdirError(f"workdir {workdir!r} failed on another host of the "
                                    "run; its error says why.")
    yield held


@contextlib.contextmanager
def lock(workdir: str, holder: bool = True):
  """Holds the workdir while a run trains; only the chief of a multi-host run takes it.

  Raises:
    WorkdirError: naming the live run that holds a local workdir.
  """
  if not holder:
    yield Lock()
    return
  if fs.is_remote(workdir):
    note = fs.path(workdir) / LOCK_FILE
    if note.exists():
      logging.warning("Workdir %s has a lock note of another run (%s): a bucket cannot be "
                      "locked, so make sure that run has ended before this one writes "
                      "checkpoints there.", workdir, _describe(note.read_text()))
    held = Lock(note=note)
    try:
      yield held
    finally:
      with contextlib.suppress(Exception):  # only this run's own note
        if held.written is not None and note.read_text() == held.written:
          note.unlink()
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path) as f:
        held = f.read()
      raise WorkdirError(
          f"workdir {workdir!r} is in use by another training run ({_describe(held)}). Wait "
          "for it to finish or stop it, or pass another --workdir.") from None
    yield Lock(fd)
  finally:
    os.close(fd)
