"""A run's length and cadence: how many steps, and when to log, draw, score and save.

Every rule about steps lives here: ``num_train_steps=-1`` means ``num_epochs``
epochs, ``save_every_steps=-1`` every 10 epochs, and all of them must be
multiples of ``steps_per_call`` (periodic work happens between calls).
"""

from __future__ import annotations

import dataclasses

from dcgan_jax import errors

EPOCHS_PER_SAVE = 10  # save_every_steps=-1, as the original saves


def length(config, steps_per_epoch: int | None) -> int | None:
  """Steps in the run (None when it counts epochs and the data is not known yet)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch if steps_per_epoch else None


def describe_length(config, total: int) -> str:
  """Which key sets a length of ``total`` steps, for messages."""
  if config.num_train_steps > 0:
    return f"num_train_steps={total}"
  return f"num_epochs={config.num_epochs}: {total} steps"


def known_length(config, saved: dict | None) -> int | None:
  """The length before any data is read: from the config, or from a checkpoint of the same data."""
  spe = saved and saved["progress"].get("steps_per_epoch")
  same_data = spe and all(saved["config"].get(k) == config[k]
                          for k in ("dataset", "batch_size", "synthetic_size"))
  return length(config, spe if same_data else None)


def _not_multiple(k: int, key: str, value, steps: int, meaning: str = "") -> list[str]:
  if steps <= 0 or steps % k == 0:
    return []
  return [f"config.{key}={value}: {meaning}not a multiple of config.steps_per_call={k} "
          "(logging, grids, FID and checkpoints happen between calls of K steps); change "
          "one of them"]


def problems(config) -> list[str]:
  """The cadence keys of a config that are not multiples of ``steps_per_call``."""
  k = config.steps_per_call
  keys = ("log_every", "plot_every", "save_every_steps", "num_train_steps", "fid.eval_every")
  return [p for key in keys for p in _not_multiple(k, key, config[key], config[key])]


@dataclasses.dataclass(frozen=True)
class Due:
  """What is due after a call: any of log, grid, fid, save."""

  log: bool = False
  grid: bool = False
  fid: bool = False
  save: bool = False

  def __bool__(self) -> bool:
    return self.log or self.grid or self.fid or self.save


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A run's length and the intervals of its periodic work, in steps.

  ``fid_every``: 0 off; -1 planned once the step is timed (``with_fid``).
  """

  total: int
  log_every: int
  plot_every: int
  save_every: int
  fid_every: int

  @classmethod
  def of(cls, config, steps_per_epoch: int) -> Schedule:
    """The schedule of ``config`` on data of ``steps_per_epoch``; raises ``ConfigError``."""
    total, save, k = length(config, steps_per_epoch), config.save_every_steps, config.steps_per_call
    bad = []
    if config.num_train_steps < 0:
      bad += _not_multiple(k, "num_epochs", config.num_epochs, total,
                           f"makes {total} steps on this data, ")
    if save == -1:
      save = EPOCHS_PER_SAVE * steps_per_epoch
      bad += _not_multiple(k, "save_every_steps", -1, save,
                           f"means every {save} steps on this data, ")
    if bad:
      raise errors.ConfigError("invalid config for this data: " + "; ".join(bad))
    return cls(total, config.log_every, config.plot_every, save, config.fid.eval_every)

  def with_fid(self, every: int) -> Schedule:
    return dataclasses.replace(self, fid_every=every)

  def due(self, step: int) -> Due:
    """What is due after ``step``: every interval, and everything but FID at the end."""
    def at(every):
      return step % every == 0 or step == self.total
    return Due(log=at(self.log_every), grid=at(self.plot_every),
               fid=self.fid_every > 0 and step % self.fid_every == 0,
               save=at(self.save_every))

  def describe(self, fid: str) -> str:
    return (f"log every {self.log_every}, grids every {self.plot_every}, checkpoints every "
            f"{self.save_every}, {fid}")
