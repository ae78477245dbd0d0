"""Checking a training config before anything is built or compiled.

``validate(config)`` compares the config with the reference one
(``dcgan_jax/defaults.py``): every key there must be present, no other key may
be, each value must have the reference value's type (an int passes for a
float), and the keys below must hold possible values. Every problem found is
listed in one ``ConfigError``, each line naming the key and what it allows.
What only the data decides (the run's length and the save interval when they
count epochs) is checked by ``check_call_boundaries`` once the data is loaded,
with the same kind of error. ``load`` reads a config file by path.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from collections.abc import Callable

import ml_collections

from dcgan_jax import augment, conv_ops, defaults, losses, models, parallel

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


def _parses(parse: Callable) -> Callable:
  def ok(v) -> bool:
    try:
      parse(v)
    except ValueError:
      return False
    return True
  return ok


def _in(options, why: str = "") -> tuple[Callable, str]:
  return (lambda v: v in options), "one of " + ", ".join(map(repr, options)) + why


# key -> (predicate, what is allowed). Types come from the reference config.
RULES: dict[str, tuple[Callable, str]] = {
    "dataset": ((lambda v: bool(v.strip())),
                "a folder of images, 'tfds:NAME' or 'synthetic'"),
    "image_size": _in(IMAGE_SIZES, " (the only size the DCGAN's layers produce)"),
    "synthetic_size": _at_least(1),
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
    "conv_impl": _in(conv_ops.IMPLS),
    "steps_per_call": _at_least(1),
    "loss": _in(losses.LOSSES),
    "diffaugment": (_parses(augment.parse), "'' or a comma-separated subset of "
                    + ", ".join(augment.POLICIES)),
    "ema_decay": ((lambda v: 0 <= v < 1), "a number in [0, 1) (0: no EMA)"),
    "standing_stats": ((lambda v: v >= 0),
                       "an integer >= 0 (noise draws; 0: the running averages)"),
}


def reference_config() -> ml_collections.ConfigDict:
  """The config every other one must match in keys and types (``defaults.py``)."""
  return defaults.get_config()


def load(path: str, name: str = "get_config") -> ml_collections.ConfigDict:
  """The config of a config file (``configs/*.py``), loaded by path."""
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], os.path.abspath(path))
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return getattr(module, name)()


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
    out.append(f"config.{prefix}{k}: missing (default in dcgan_jax/defaults.py: {ref[k]!r})")
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


def train_length(config, steps_per_epoch: int) -> int:
  """The run's length in steps: ``num_train_steps``, or ``num_epochs`` epochs when it is -1."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


def describe_length(config, total: int) -> str:
  """Which key sets the run's length of ``total`` steps, for messages."""
  if config.num_train_steps > 0:
    return f"num_train_steps={total}"
  return f"num_epochs={config.num_epochs}: {total} steps"


def _call_boundaries(config, sizes: dict[str, int]) -> list[str]:
  """The keys of ``sizes`` ({key: steps}) that are not multiples of steps_per_call."""
  k = config.get("steps_per_call", 1)
  if not isinstance(k, int) or k < 1:
    return []
  return [f"config.{key}={v}: must be a multiple of config.steps_per_call={k} (logging, "
          "grids, FID and checkpoints happen between calls of K steps); or change "
          "steps_per_call" for key, v in sizes.items() if v > 0 and v % k]


def validate(config, device_count: int | None = None) -> None:
  """Raises ``ConfigError`` listing every bad key of ``config``.

  Args:
    config: a training ConfigDict (see dcgan_jax/defaults.py).
    device_count: devices the global batch is split over (default
      ``jax.device_count()``).

  Raises:
    ConfigError: naming each unknown, missing, mistyped or impossible key and
      what it allows.
  """
  problems = _problems(config, reference_config())
  bad = {p.split("=")[0].split(":")[0] for p in problems}
  batch = config.get("batch_size")
  if "config.batch_size" not in bad and batch is not None:
    try:
      parallel.split_batch(batch, *((1, device_count) if device_count else ()))
    except ValueError as e:
      problems.append(str(e))
  if not bad and config.fid.eval_every < -1:
    problems.append(f"config.fid.eval_every={config.fid.eval_every}: must be -1 (automatic), "
                    "0 (off) or a number of steps >= 1")
  if not bad:
    problems += _call_boundaries(config, {
        k: config[k] for k in ("log_every", "plot_every", "save_every_steps",
                               "num_train_steps")} | {"fid.eval_every": config.fid.eval_every})
  if (config.get("input_on_device") is True and config.get("cache") is False
      and config.get("dataset") != "synthetic"
      and not str(config.get("dataset")).startswith("tfds:")):
    problems.append(
        "config.input_on_device=True: needs the images in memory; set "
        "config.cache=True (or input_on_device=False to stream from disk)")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def check_call_boundaries(config, total_steps: int, save_every: int) -> None:
  """The checks of ``validate`` that need the data: the run's length and save interval.

  Args:
    config: the run's config.
    total_steps: the run's length (``num_epochs`` epochs when num_train_steps is -1).
    save_every: the save interval (10 epochs when save_every_steps is -1).

  Raises:
    ConfigError: naming the key whose steps are not a multiple of steps_per_call.
  """
  k, problems = config.steps_per_call, []
  if total_steps % k:
    problems.append(
        f"config.num_epochs={config.num_epochs}: makes {total_steps} steps on this data, "
        f"not a multiple of config.steps_per_call={k}; set config.num_train_steps to a "
        f"multiple of {k}, or change steps_per_call")
  if save_every % k:
    problems.append(
        f"config.save_every_steps={config.save_every_steps}: means every {save_every} steps "
        f"(10 epochs) on this data, not a multiple of config.steps_per_call={k}; set it to "
        f"a multiple of {k}, or change steps_per_call")
  if problems:
    raise ConfigError("invalid config for this data:\n  " + "\n  ".join(problems))
