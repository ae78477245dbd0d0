"""What a training run carries from step to step; its field names are the checkpoint format."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from dcgan_jax import models


class NetState(train_state.TrainState):
  """One net: ``step`` (updates applied), params, Adam state, BatchNorm statistics.

  ``apply_fn`` stays None: the step applies the modules itself, since training
  and sampling build them with different BatchNorm axes.
  """

  batch_stats: Any = None

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


class GANState(struct.PyTreeNode):
  """Everything a training run carries from step to step."""

  step: jax.Array   # int32: iterations done
  rng: jax.Array    # uint32[2]: the run's base key; noise is fold_in(rng, step)
  g: NetState
  d: NetState
  # EMA of G's {'params', 'batch_stats'} (``ema_on(config)``), else None.
  ema: Any = None


def get_dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def make_models(config, axis_name: str | None = None):
  """The (Generator, Discriminator) pair for ``config``.

  Args:
    config: needs nz, ngf, ndf, dtype, init_scheme, conv_impl, g_upsample,
      d_spectral_norm, d_batch_norm.
    axis_name: BatchNorm statistics are averaged over this mapped axis
      (None: per-call statistics, also what initialisation and sampling use).
  """
  dtype = get_dtype(config.dtype)
  impl = config.conv_impl
  return (models.Generator(config.nz, config.ngf, axis_name, dtype, config.init_scheme, impl,
                           config.g_upsample),
          models.Discriminator(config.ndf, axis_name, dtype, config.init_scheme, impl,
                               config.d_spectral_norm, config.d_batch_norm))


def create_train_state(config, rng) -> GANState:
  """Initialises both nets and their Adam optimizers.

  Args:
    config: model sizes, lr_g, lr_d, beta1, beta2, the EMA keys.
    rng: a PRNGKey; the state keeps a key derived from it for the noise.

  Returns:
    A ``GANState`` at step 0 (unreplicated).
  """
  generator, discriminator = make_models(config)
  kg, kd, knoise = jax.random.split(rng, 3)
  z = jnp.zeros((2, config.nz))
  x = jnp.zeros((2, config.image_size, config.image_size, 3))
  g_vars = jax.jit(functools.partial(generator.init, train=False))(kg, z)
  d_vars = jax.jit(functools.partial(discriminator.init, train=False))(kd, x)

  def net(variables, lr):
    tx = optax.adam(lr, b1=config.beta1, b2=config.beta2)
    state = NetState.create(apply_fn=None, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}))
    return state.replace(step=jnp.zeros((), jnp.int32))

  ema = None
  if ema_on(config):
    ema = jax.tree_util.tree_map(jnp.array, dict(g_vars))  # a copy, not an alias
  return GANState(step=jnp.zeros((), jnp.int32), rng=knoise,
                  g=net(g_vars, config.lr_g), d=net(d_vars, config.lr_d), ema=ema)


def ema_on(config) -> bool:
  """Whether the run keeps an EMA of G (``ema_decay`` or ``ema_kimg``; a dict or a config)."""
  return config.get("ema_decay", 0) > 0 or config.get("ema_kimg", 0) > 0


def ema_beta(config, step):
  """The EMA's decay in the update after iteration ``step`` (0-based, traced).

  ``ema_kimg`` > 0: StyleGAN2-ADA's half-life of ``ema_kimg`` thousand images,
  never longer than ``ema_rampup`` of the images seen so far. Else TF's
  ``ExponentialMovingAverage(num_updates)``: ``min(ema_decay, (1 + n) / (10 + n))``.
  The ramps keep short runs from being averaged back to the initial weights.
  """
  n = step.astype(jnp.float32)
  if config.ema_kimg > 0:
    nimg = config.ema_kimg * 1000.0
    if config.ema_rampup > 0:
      nimg = jnp.minimum(nimg, n * config.batch_size * config.ema_rampup)
    return 0.5 ** (config.batch_size / jnp.maximum(nimg, 1e-8))
  return jnp.minimum(config.ema_decay, (1.0 + n) / (10.0 + n))


def update_ema(ema, variables, beta):
  """The EMA moved towards G's ``variables`` with decay ``beta``."""
  return jax.tree_util.tree_map(lambda e, v: beta * e + (1.0 - beta) * v, ema, variables)


def sampling_variables(state: GANState):
  """G's variables for samples, generate and evaluation: the EMA when kept."""
  return state.ema if state.ema is not None else state.g.variables
