"""What the bench scripts share: the project's step, built as main.py builds it."""

import functools
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(name: str, **overrides):
  """configs/<name>.py with ``overrides`` applied (None values skipped)."""
  config = importlib.import_module(f"configs.{name}").get_config()
  for k, v in overrides.items():
    if v is not None:
      config[k] = v
  return config


def build_step(config):
  """(device state, ``parallel.Runner``) exactly as train_and_evaluate builds them."""
  import jax  # noqa: PLC0415

  from dcgan_jax import cpu_flags, parallel, train  # noqa: PLC0415

  cpu_flags.use_fast_cpu_flags()  # as main.py does

  state = train.create_train_state(config, jax.random.PRNGKey(config.seed))
  axis = parallel.AXIS if config.sync_batch_stats else None
  generator, discriminator = train.make_models(config, axis)
  runner = parallel.make_runner(
      functools.partial(train.train_step, generator=generator,
                        discriminator=discriminator, nz=config.nz,
                        ema_decay=config.ema_decay),
      config.parallel)
  return runner.put_state(state), runner


def random_batch(config, seed: int = 0):
  """A fixed host batch of random images in [-1, 1]."""
  import numpy as np  # noqa: PLC0415
  s = config.image_size
  return np.random.default_rng(seed).uniform(
      -1, 1, (config.batch_size, s, s, 3)).astype(np.float32)


def time_step(config, steps: int, warmup: int, seed: int = 0) -> dict:
  """Times the project's step on a fixed random batch already on the devices.

  Returns:
    {'imgs_per_s', 'ms_per_step', 'first_call_s', 'loss_d', 'loss_g',
     'page_faults_per_step', 'sys_s_per_step'}, timed after compilation with
    ``block_until_ready``.
  """
  import resource  # noqa: PLC0415
  import time  # noqa: PLC0415

  import jax  # noqa: PLC0415

  state, runner = build_step(config)
  batch = runner.put_batch(random_batch(config, seed))

  def run(n, state):
    for _ in range(n):
      state, out = runner.step(state, batch, True, True)
    jax.block_until_ready((state, out))
    return state, out

  t0 = time.perf_counter()
  state, out = run(1, state)
  first = time.perf_counter() - t0
  state, out = run(warmup, state) if warmup else (state, out)
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  state, out = run(steps, state)
  dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  m = runner.get(out)
  return {"imgs_per_s": config.batch_size * steps / dt, "ms_per_step": 1000 * dt / steps,
          "first_call_s": first,
          "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
          "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
          "loss_d": float(m["d"].compute()["loss_d"]),
          "loss_g": float(m["g"].compute()["loss_g"])}
