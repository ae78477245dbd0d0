"""The generate and interpolate modes: a trained model's faces as PNG grids.

The models come from the workdir's latest checkpoint (or ``config.init_from``),
whose saved config gives the model sizes, or from the PyTorch original's
``netg``/``netd`` state dicts (``config.torch_netg``/``torch_netd``).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import ml_collections
from absl import logging

from dcgan_jax import checkpoints
from dcgan_jax.errors import ConfigError
from dcgan_jax.samples import sampling
from dcgan_jax.state import make_models, sampling_variables


class Models(NamedTuple):
  generator: object
  g_variables: dict
  discriminator: object
  d_variables: dict
  nz: int
  source: str


def load_models(config, workdir: str) -> Models:
  """G and D with their variables for sampling.

  Args:
    config: torch_netg/torch_netd (PyTorch state dicts), else init_from or the
      workdir's checkpoints; dtype.
    workdir: the run whose latest checkpoint is used.

  Returns:
    ``Models`` (G, its variables, D, its variables, nz, where they came from).
  """
  if config.torch_netg or config.torch_netd:
    if not (config.torch_netg and config.torch_netd):
      raise ConfigError("pass both --config.torch_netg=PATH and --config.torch_netd=PATH "
                       "(generate ranks G's samples with D).")
    from dcgan_jax.pytorch import original  # noqa: PLC0415
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.d_spectral_norm, cfg.d_batch_norm = False, True  # the original's D
    g_vars, cfg.nz, cfg.ngf = original.load_netg(config.torch_netg)
    d_vars, cfg.ndf = original.load_netd(config.torch_netd)
    source = f"{config.torch_netg} + {config.torch_netd}"
  else:
    state, cfg, source = checkpoints.restore_trained(
        config, workdir, "Train first (--mode=train with this workdir), point "
        "--config.init_from at a trained workdir, or load the PyTorch original's "
        "nets with --config.torch_netg=... --config.torch_netd=...")
    # The EMA generator when the run kept one.
    g_vars, d_vars = sampling_variables(state), state.d.variables
  generator, discriminator = make_models(cfg)
  g_vars = sampling.prepare(generator, g_vars, config)
  return Models(generator, g_vars, discriminator, d_vars, cfg.nz, source)


def run(config, workdir: str, mode: str) -> str:
  """Writes the grid of ``mode`` ('generate' or 'interpolate') into ``workdir``.

  Args:
    config: the gen_* / interp_* keys, seed, and the model source (``load_models``).
    workdir: the run folder (models from its checkpoints; the PNG goes here).
    mode: 'generate': the gen_num of gen_search_num samples D scores highest,
      best first (config.gen_img); 'interpolate': interp_rows rows of
      interp_steps images, alternately linear and spherical (config.interp_img).

  Returns:
    The path of the PNG written.
  """
  m = load_models(config, workdir)
  rng = jax.random.PRNGKey(config.seed)
  if mode == "generate":
    images, scores = sampling.generate(
        m.generator, m.g_variables, m.discriminator, m.d_variables, rng, nz=m.nz,
        search_num=config.gen_search_num, num=config.gen_num, mean=config.gen_mean,
        std=config.gen_std)
    grid, name = sampling.make_grid(images), config.gen_img
    logging.info("Kept %d of %d samples, D scores %.3f (best) .. %.3f.",
                 len(images), config.gen_search_num, scores[0], scores[-1])
  elif mode == "interpolate":
    z = sampling.interpolation_latents(rng, nz=m.nz, rows=config.interp_rows,
                                       steps=config.interp_steps, mean=config.gen_mean,
                                       std=config.gen_std)
    grid = sampling.make_grid(sampling.sample(m.generator, m.g_variables, z),
                              ncol=config.interp_steps)
    name = config.interp_img
  else:
    raise ValueError(f"unknown mode {mode!r}: use train, generate or interpolate.")
  path = os.path.join(workdir, name)
  sampling.save_png(path, grid)
  logging.info("Wrote %s (models: %s).", path, m.source)
  return path
