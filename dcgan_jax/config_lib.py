"""Loading a config file and checking it before anything is built.

``validate`` compares a config with the reference one (``defaults.py``): the
same keys, the same types (an int passes for a float), and possible values;
one ``ConfigError`` lists every bad key and what it allows.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from collections.abc import Callable

import ml_collections

from dcgan_jax import augment, conv_ops, defaults, losses, models, parallel, schedule
from dcgan_jax.data import input_pipeline
from dcgan_jax.errors import ConfigError

# The sizes the architecture produces: its layers turn a 1x1 latent into
# 4, 8, 16, 32 and then 96 pixels (see models.py).
IMAGE_SIZES = (96,)
DTYPES = ("float32", "bfloat16")


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
    "g_upsample": _in(models.UPSAMPLES),
    "steps_per_call": _at_least(1),
    "loss": _in(losses.LOSSES),
    "diffaugment": (_parses(augment.parse), "'' or a comma-separated subset of "
                    + ", ".join(augment.POLICIES)),
    "ema_decay": ((lambda v: 0 <= v < 1), "a number in [0, 1) (0: no EMA)"),
    "ema_kimg": ((lambda v: math.isfinite(v) and v >= 0),
                 "a number of thousand images >= 0 (0: ema_decay decides)"),
    "ema_rampup": ((lambda v: math.isfinite(v) and v >= 0), "a fraction >= 0 (0: none)"),
    "r1_gamma": ((lambda v: math.isfinite(v) and v >= 0), "a weight >= 0 (0: off)"),
    "r1_every": _at_least(1),
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
    raise ConfigError(f"config file {path!r} does not exist; pass --config=configs/NAME.py.")
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
    problems += schedule.problems(config)
  if not bad and config.ema_decay > 0 and config.ema_kimg > 0:
    problems.append(f"config.ema_kimg={config.ema_kimg}: the EMA's horizon is ema_kimg or "
                    f"ema_decay (={config.ema_decay}), not both; set one of them to 0")
  if (not bad and config.input_on_device and not config.cache
      and input_pipeline.source(config.dataset) == "folder"):
    problems.append(
        "config.input_on_device=True: needs the images in memory; set "
        "config.cache=True (or input_on_device=False to stream from disk)")
  if problems:
    raise ConfigError("invalid config: " + (problems[0] if len(problems) == 1 else
                                            "\n  " + "\n  ".join(problems)))
