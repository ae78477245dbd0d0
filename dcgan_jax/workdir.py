"""The workdir: checked writable before anything is built, and locked while a run trains."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time

from dcgan_jax.errors import WorkdirError

LOCK_FILE = ".lock"


def check(workdir: str) -> None:
  """Creates ``workdir`` if needed and proves it writable; ``WorkdirError`` naming it if not."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir!r} is a file, not a folder; pass --workdir=PATH "
                       "naming a folder (it is created if missing).")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_") as f:
      f.write(b"ok")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise WorkdirError(
        f"workdir {workdir!r} is not a writable folder ({e.strerror or e}); "
        "pass --workdir=PATH naming a folder you can write to.") from e


class Lock:
  """Held by ``lock``; ``announce`` writes who holds it into the lock file."""

  def __init__(self, fd: int | None):
    self._fd = fd

  def announce(self) -> None:
    """Names this process in the lock file, for a second run's error."""
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)


@contextlib.contextmanager
def lock(workdir: str, holder: bool = True):
  """Holds ``WORKDIR/.lock`` (an advisory ``flock``, which the OS releases however the
  process ends) while a run trains; only the chief of a multi-host run takes it.

  Raises:
    WorkdirError: naming the live run that holds it.
  """
  if not holder:
    yield Lock(None)
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
      raise WorkdirError(
          f"workdir {workdir!r} is in use by another training run (pid "
          f"{who.get('pid', '?')} on host {who.get('host', '?')}, started "
          f"{who.get('started', '?')}). Wait for it to finish or stop it, or pass another "
          "--workdir.") from None
    yield Lock(fd)
  finally:
    os.close(fd)
