"""What the bench scripts share: the project's step, built as main.py builds it."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def get_config(name: str, **overrides):
  """configs/<name>.py (loaded by path, as main.py does) with ``overrides`` (None: skipped)."""
  from dcgan_jax import config_lib  # noqa: PLC0415
  config = config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))
  for k, v in overrides.items():
    if v is not None:
      config[k] = v
  return config


class Step:
  """The training call as train_and_evaluate builds it: ``runner``, ``call``, ``empty``."""

  def __init__(self, config):
    from dcgan_jax import parallel, summaries, train  # noqa: PLC0415
    self.runner = parallel.make_runner(config.parallel)
    self.call = train.make_train_call(config, self.runner)
    self.empty = self.runner.put_state(summaries.empty(config.loss))


def build_step(config):
  """(device state, ``Step``) exactly as train_and_evaluate builds them."""
  import jax  # noqa: PLC0415

  from dcgan_jax import cpu_flags  # noqa: PLC0415
  from dcgan_jax.state import create_train_state  # noqa: PLC0415

  cpu_flags.use_fast_cpu_flags()  # as main.py does
  step = Step(config)
  return step.runner.put_state(create_train_state(config, jax.random.PRNGKey(config.seed))), step


def random_batch(config, seed: int = 0):
  """A fixed host batch of random images in [-1, 1]: (steps_per_call, batch, S, S, 3)."""
  import numpy as np  # noqa: PLC0415
  s = config.image_size
  return np.random.default_rng(seed).uniform(
      -1, 1, (config.steps_per_call, config.batch_size, s, s, 3)).astype(np.float32)


def time_step(config, steps: int, warmup: int, seed: int = 0) -> dict:
  """Times the project's step on a fixed random batch already on the devices.

  One call runs ``config.steps_per_call`` iterations; ``steps`` and ``warmup``
  count calls, and the warm-up covers at least one period of D, G and R1 turns.

  Returns:
    {'imgs_per_s', 'ms_per_step', 'first_call_s', 'loss_d', 'loss_g',
     'page_faults_per_step', 'sys_s_per_step', 'programs'}, timed after
    compilation with ``block_until_ready``; per step means per iteration;
    'programs': how many compiled programs the calls ran (on CPU, one per
    pattern of D, G and R1 turns met).
  """
  import math  # noqa: PLC0415
  import resource  # noqa: PLC0415
  import time  # noqa: PLC0415

  import jax  # noqa: PLC0415

  from dcgan_jax import summaries  # noqa: PLC0415

  state, step = build_step(config)
  batch = step.runner.put_batch(random_batch(config, seed))
  done = 0  # the loop's step count: which of D, G and R1 a call runs follows it

  def run(n, state):
    nonlocal done
    for _ in range(n):
      state, summary = step.call(state, step.empty, batch, None, done)
      done += config.steps_per_call
    jax.block_until_ready((state, summary))
    return state, summary

  t0 = time.perf_counter()
  state, summary = run(1, state)
  first = time.perf_counter() - t0
  # Every pattern of D, G and R1 turns compiles before the clock starts (on CPU
  # each pattern is its own program): warm up over one period of the calls.
  k = config.steps_per_call
  warmup = max(warmup, math.lcm(step.call.period, k) // k)
  state, summary = run(warmup, state) if warmup else (state, summary)
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  state, summary = run(steps, state)
  dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  iterations = steps * config.steps_per_call
  m = summaries.host_scalars(step.runner.get(summary))
  return {"imgs_per_s": config.batch_size * iterations / dt,
          "ms_per_step": 1000 * dt / iterations, "first_call_s": first,
          "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / iterations,
          "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / iterations,
          "loss_d": m["loss_d"], "loss_g": m["loss_g"], "programs": len(step.call.programs)}
