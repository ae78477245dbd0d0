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
  """(replicated initial state, pmapped step) exactly as train_and_evaluate builds them."""
  import jax  # noqa: PLC0415

  from dcgan_jax import cpu_flags, parallel, train  # noqa: PLC0415

  cpu_flags.use_fast_cpu_flags()  # as main.py does

  state = train.create_train_state(config, jax.random.PRNGKey(config.seed))
  axis = parallel.AXIS if config.sync_batch_stats else None
  generator, discriminator = train.make_models(config, axis)
  p_step = parallel.pmap_step(
      functools.partial(train.train_step, generator=generator,
                        discriminator=discriminator, nz=config.nz),
      static_argnums=(2, 3))
  return parallel.replicate(state), p_step


def time_step(config, steps: int, warmup: int, seed: int = 0) -> dict:
  """Times the project's step on a fixed random batch already on the devices.

  Returns:
    {'imgs_per_s', 'ms_per_step', 'first_call_s', 'loss_d', 'loss_g',
     'compiled_variants', 'page_faults_per_step', 'sys_s_per_step'}, timed after
    compilation with ``block_until_ready``.
  """
  import resource  # noqa: PLC0415
  import time  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from dcgan_jax import parallel  # noqa: PLC0415

  pstate, p_step = build_step(config)
  b, s = config.batch_size, config.image_size
  host = np.random.default_rng(seed).uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
  batch = parallel.to_devices(parallel.shard(host))
  t0 = time.perf_counter()
  pstate, out = p_step(pstate, batch, True, True)
  jax.block_until_ready((pstate, out))
  first = time.perf_counter() - t0
  for _ in range(warmup):
    pstate, out = p_step(pstate, batch, True, True)
  jax.block_until_ready((pstate, out))
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    pstate, out = p_step(pstate, batch, True, True)
  jax.block_until_ready((pstate, out))
  dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  m = parallel.unreplicate(out)
  # A step that recompiled would show here; pmap caches per static args.
  sizes = p_step._cache_size() if hasattr(p_step, "_cache_size") else "n/a"
  return {"imgs_per_s": b * steps / dt, "ms_per_step": 1000 * dt / steps,
          "first_call_s": first, "compiled_variants": sizes,
          "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
          "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
          "loss_d": float(m["d"].compute()["loss_d"]),
          "loss_g": float(m["g"].compute()["loss_g"])}
