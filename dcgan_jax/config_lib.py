"""Checking a training config before anything is built or compiled.

``validate(config)`` compares the config with the reference one
(``configs/anime.py``): every key there must be present, no other key may be,
each value must have the reference value's type (an int passes for a float),
and the keys below must hold possible values. Every problem found is listed
in one ``ConfigError``, each line naming the key and what it allows.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import ml_collections

from dcgan_jax import models, parallel

# The sizes the architecture produces: its layers turn a 1x1 latent into
# 4, 8, 16, 32 and then 96 pixels (see models.py).
IMAGE_SIZES = (96,)
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config that cannot train; the message names each bad key."""


def _at_least(lo) -> tuple[Callable, str]:
  return (lambda v: v >= lo), f"an integer >= {lo}"


def _positive_float() -> tuple[Callable, str]:
  return (lambda v: math.isfinite(v) and v > 0), "a finite number > 0"


def _in(options, why: str = "") -> tuple[Callable, str]:
  return (lambda v: v in options), "one of " + ", ".join(map(repr, options)) + why


# key -> (predicate, what is allowed). Types come from the reference config.
RULES: dict[str, tuple[Callable, str]] = {
    "dataset": ((lambda v: bool(v.strip())),
                "a folder of images, 'tfds:NAME' or 'synthetic'"),
    "image_size": _in(IMAGE_SIZES, " (the only size the DCGAN's layers produce)"),
    "synthetic_size": _at_least(1),
    "shuffle_buffer": _at_least(0),
    "nz": _at_least(1),
    "ngf": _at_least(1),
    "ndf": _at_least(1),
    "dtype": _in(DTYPES),
    "batch_size": _at_least(1),
    "lr_g": _positive_float(),
    "lr_d": _positive_float(),
    "beta1": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "beta2": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "d_every": _at_least(1),
    "g_every": _at_least(1),
    "num_epochs": _at_least(1),
    "num_train_steps": ((lambda v: v == -1 or v >= 1),
                        "-1 (num_epochs epochs) or an integer >= 1"),
    "seed": _at_least(0),
    "log_every": _at_least(1),
    "plot_every": _at_least(1),
    "num_plot": _at_least(1),
    # Checkpoints and generation (configs/anime.py, from the checkpoints work).
    "save_every_steps": ((lambda v: v == -1 or v >= 1),
                         "-1 (every 10 epochs) or an integer >= 1"),
    "max_to_keep": _at_least(1),
    "gen_search_num": _at_least(1),
    "gen_num": _at_least(1),
    "gen_std": _positive_float(),
    "interp_rows": _at_least(1),
    "interp_steps": _at_least(2),
    "init_scheme": _in(tuple(models.INITS)),
    "parallel": _in(parallel.WRAPPERS),
    "ema_decay": ((lambda v: 0 <= v < 1), "a number in [0, 1) (0: no EMA)"),
}


def reference_config() -> ml_collections.ConfigDict:
  """The config every other one must match in keys and types."""
  from configs import anime  # noqa: PLC0415 (configs/ sits next to the package)
  return anime.get_config()


def _type_problem(key: str, value, ref) -> str | None:
  if ref is None:  # no default to take a type from
    return None
  want = type(ref)
  if isinstance(ref, bool):
    ok = isinstance(value, bool)
  elif isinstance(ref, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(ref, float):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    want = float
  else:
    ok = isinstance(value, want)
  if ok:
    return None
  return (f"config.{key}={value!r} is of type {type(value).__name__}; it must be "
          f"of type {want.__name__} (default {ref!r})")


def _problems(config, ref, prefix: str = "") -> list[str]:
  out = []
  keys, ref_keys = set(config.keys()), set(ref.keys())
  for k in sorted(keys - ref_keys):
    close = difflib.get_close_matches(k, ref_keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    out.append(f"config.{prefix}{k}: unknown key ({hint}known keys: "
               f"{', '.join(sorted(ref_keys))})")
  for k in sorted(ref_keys - keys):
    out.append(f"config.{prefix}{k}: missing (default in configs/anime.py: {ref[k]!r})")
  for k in sorted(keys & ref_keys):
    value, want = config[k], ref[k]
    if isinstance(want, ml_collections.ConfigDict):
      if isinstance(value, ml_collections.ConfigDict):
        out.extend(_problems(value, want, f"{prefix}{k}."))
      else:
        out.append(f"config.{prefix}{k}={value!r}: must be a ConfigDict")
      continue
    if (p := _type_problem(prefix + k, value, want)) is not None:
      out.append(p)
    elif not prefix and k in RULES:
      ok, allowed = RULES[k]
      if not ok(value):
        out.append(f"config.{k}={value!r}: must be {allowed}")
  return out


def validate(config, device_count: int | None = None) -> None:
  """Raises ``ConfigError`` listing every bad key of ``config``.

  Args:
    config: a training ConfigDict (see configs/anime.py).
    device_count: devices the global batch is split over (default
      ``jax.device_count()``).

  Raises:
    ConfigError: naming each unknown, missing, mistyped or impossible key and
      what it allows.
  """
  problems = _problems(config, reference_config())
  batch = config.get("batch_size")
  if not any(p.startswith("config.batch_size") for p in problems) and batch is not None:
    if device_count is None:
      import jax  # noqa: PLC0415
      device_count = jax.device_count()
    if batch % device_count:
      problems.append(
          f"config.batch_size={batch}: must be divisible by the number of devices "
          f"({device_count}), e.g. {max(1, batch // device_count) * device_count}")
  if (config.get("input_on_device") is True and config.get("cache") is False
      and config.get("dataset") != "synthetic"
      and not str(config.get("dataset")).startswith("tfds:")):
    problems.append(
        "config.input_on_device=True: needs the images in memory; set "
        "config.cache=True (or input_on_device=False to stream from disk)")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
