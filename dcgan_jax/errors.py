"""The errors the project raises for what a person can fix.

``main.py`` prints these as one ``error: ...`` line (the traceback only with
``--verbose``); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A mistake in the config, a path, the data, the workdir or a checkpoint (exit 2)."""

  exit_code = 2


class RunStopped(Exception):
  """Training stopped on a fault its message explains: NaN, a failed write (exit 1)."""

  exit_code = 1


class ConfigError(UserError, ValueError):
  """A config that cannot train; the message names each bad key."""


class DataError(UserError, ValueError):
  """A dataset that is missing, not a folder, or holds no readable image."""


class WorkdirError(UserError, OSError):
  """A workdir that cannot be used: not a folder, not writable, unreachable, in use."""


class FileError(UserError, ValueError):
  """A file the config names (FID weights, a PyTorch state dict) that cannot be used."""


class CheckpointError(UserError, ValueError):
  """No checkpoint, none readable, or one trained with other model sizes."""
