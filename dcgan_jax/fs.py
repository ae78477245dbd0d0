"""Paths on a local disk or in a bucket (``gs://``), through ``etils.epath`` as orbax uses it.

Every file a run reads or writes goes through ``path``: the workdir (lock,
grids, FID cache, best checkpoint, generate's and eval's outputs; orbax and
TensorBoard take the same URLs) and a folder dataset. A scheme this project
cannot serve fails at once, naming the path, rather than becoming a local
folder named ``foo:``.
"""

from __future__ import annotations

import os
import re

from etils import epath

from dcgan_jax.errors import UserError

# Besides local disks: what orbax checkpoints to (TensorStore's gcs driver) and
# TensorFlow's summary writer and tf.data read from.
REMOTE = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(p) -> str | None:
  """'gs' for 'gs://bucket/x', None for a local path."""
  m = _SCHEME.match(str(p))
  return m.group(1).lower() if m else None


def is_remote(p) -> bool:
  return scheme(p) is not None


def path(p, what: str = "path") -> epath.Path:
  """``p`` as an ``epath.Path``; ``UserError`` naming it for a filesystem not served here."""
  s = scheme(p)
  if s is not None and s not in REMOTE:
    raise UserError(f"{what} {str(p)!r}: {s}:// is not a filesystem this program can use; "
                    "pass a local path or gs://BUCKET/PATH.")
  return epath.Path(p if s else os.path.expanduser(str(p)))


def unreachable(p, e: BaseException) -> str:
  """Why a filesystem failed at ``p``, and what to check, in one line."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  what = ("check the bucket's name, your credentials (gcloud auth application-default "
          "login) and the network" if is_remote(p) else "check the path and its permissions")
  return f"{getattr(e, 'strerror', None) or text[:300]}; {what}"


def join(p, *parts) -> str:
  """``p/parts...`` as a string, for local paths and URLs alike."""
  return str(path(p).joinpath(*map(str, parts)))


def expand(p) -> str:
  """``~`` expanded in a local path (a shell leaves ``--workdir=~/x`` as it is); a URL as it is."""
  return str(p) if is_remote(p) else os.path.expanduser(str(p))


def absolute(p) -> str:
  """A local path made absolute; a URL as it is."""
  return str(p) if is_remote(p) else os.path.abspath(os.path.expanduser(str(p)))
