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
