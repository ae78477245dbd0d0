"""The generate, interpolate and export_torch modes: a trained model's faces, or its nets.

The models come from the workdir's newest readable checkpoint (or
``config.init_from``), whose saved config gives the model sizes, or from the
PyTorch original's ``netg``/``netd`` state dicts (``config.torch_netg``/``torch_netd``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import ml_collections
from absl import logging

from dcgan_jax import checkpoints, fs
from dcgan_jax.errors import ConfigError
from dcgan_jax.samples import sampling
from dcgan_jax.state import make_models, sampling_variables


class Models(NamedTuple):
  generator: object
  g_variables: dict
  discriminator: object
  d_variables: dict
  config: object  # the config the nets were built with
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
    cfg.d_spectral_norm, cfg.d_batch_norm = False, True  # the original's nets
    cfg.g_upsample = "transpose"
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
  return Models(generator, g_vars, discriminator, d_vars, cfg, source)


def run(config, workdir: str, mode: str) -> str:
  """Writes what ``mode`` makes into ``workdir``; returns the path (generate, interpolate).

  Args:
    config: the gen_* / interp_* keys, seed, and the model source (``load_models``).
    workdir: the run folder (models from its checkpoints; the outputs go here).
    mode: 'generate': the gen_num of gen_search_num samples D scores highest,
      best first (config.gen_img); 'interpolate': interp_rows rows of
      interp_steps images, alternately linear and spherical (config.interp_img);
      'export_torch': G (as generate samples it) and D as the PyTorch
      original's state dicts, WORKDIR/netg.pth and netd.pth.
  """
  m = load_models(config, workdir)
  rng = jax.random.PRNGKey(config.seed)
  if mode == "export_torch":
    return export_torch(m, workdir)
  if mode == "generate":
    images, scores = sampling.generate(
        m.generator, m.g_variables, m.discriminator, m.d_variables, rng, nz=m.config.nz,
        search_num=config.gen_search_num, num=config.gen_num, mean=config.gen_mean,
        std=config.gen_std)
    grid, name = sampling.make_grid(images), config.gen_img
    logging.info("Kept %d of %d samples, D scores %.3f (best) .. %.3f.",
                 len(images), config.gen_search_num, scores[0], scores[-1])
  elif mode == "interpolate":
    z = sampling.interpolation_latents(rng, nz=m.config.nz, rows=config.interp_rows,
                                       steps=config.interp_steps, mean=config.gen_mean,
                                       std=config.gen_std)
    grid = sampling.make_grid(sampling.sample(m.generator, m.g_variables, z),
                              ncol=config.interp_steps)
    name = config.interp_img
  else:
    raise ValueError(f"unknown mode {mode!r}: use generate, interpolate or export_torch.")
  path = fs.join(workdir, name)
  sampling.save_png(path, grid)
  logging.info("Wrote %s (models: %s).", path, m.source)
  return path


def export_torch(m: Models, workdir: str) -> str:
  """Writes ``m``'s nets as ``netg.pth`` / ``netd.pth`` in ``workdir``; returns netg's path.

  D is written when it is the original's (BatchNorm, no spectral norm): the
  original code has no place for another D, nor for a resize-convolution G.
  """
  if m.config.g_upsample != "transpose":
    raise ConfigError(f"{m.source} was trained with g_upsample={m.config.g_upsample!r}: "
                      "the original's netg.pth has only ConvTranspose layers. Export a run "
                      "trained with g_upsample='transpose'.")
  from dcgan_jax.pytorch import original  # noqa: PLC0415
  g_path = fs.join(workdir, "netg.pth")
  original.save_netg(g_path, m.g_variables)
  logging.info("Wrote %s (nz=%d, ngf=%d; from %s).", g_path, m.config.nz, m.config.ngf,
               m.source)
  if m.config.d_spectral_norm or not m.config.d_batch_norm:
    logging.warning("netd.pth not written: this D (d_spectral_norm=%s, d_batch_norm=%s) is "
                    "not the original's.", m.config.d_spectral_norm, m.config.d_batch_norm)
  else:
    d_path = fs.join(workdir, "netd.pth")
    original.save_netd(d_path, m.d_variables)
    logging.info("Wrote %s (ndf=%d).", d_path, m.config.ndf)
  return g_path
