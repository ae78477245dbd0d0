"""Sampling G (grids, generate, evaluation) and D's scores, and images as grids and PNGs."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import fs
from dcgan_jax.errors import ConfigError


@functools.partial(jax.jit, static_argnums=0)
def sample(generator, variables, z):
  """G(z) in inference mode: (B, nz) noise -> (B, 96, 96, 3) in [-1, 1]."""
  return generator.apply(variables, z, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats_of(generator, variables, z) -> dict:
  """G(z) in training mode: the batch mean and (biased) variance each BatchNorm
  normalises with, as a ``batch_stats`` tree."""
  stats: dict = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      x = jnp.asarray(args[0], jnp.float32)
      x = x.reshape(-1, x.shape[-1])
      mean = x.mean(0)
      node = stats
      for name in context.module.path[:-1]:
        node = node.setdefault(name, {})
      node[context.module.path[-1]] = {"mean": mean, "var": (x * x).mean(0) - mean * mean}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    generator.apply(variables, z, train=True, mutable=["batch_stats"])
  return stats


def standing_stats(generator, variables, rng, num: int, batch: int = 256) -> dict:
  """G's ``variables`` with BigGAN's standing statistics (Brock et al. 2019, section 4).

  G runs in training mode on ``num`` noise draws, ``batch`` at a time, and each
  BatchNorm's mean and variance become the averages of the batch statistics it
  normalised with: the statistics of the parameters sampled, where the running
  averages lag behind them and an EMA's average other parameters'.
  """
  batch = min(batch, num)
  per_batch = [
      _batch_stats_of(generator, variables,
                      jax.random.normal(jax.random.fold_in(rng, i), (batch, generator.nz)))
      for i in range(num // batch)]
  return {"params": variables["params"],
          "batch_stats": jax.tree_util.tree_map(lambda *s: sum(s) / len(s), *per_batch)}


def prepare(generator, variables, config) -> dict:
  """G's ``variables`` as every sampling path uses them: with standing statistics of
  ``config.standing_stats`` draws (always the same draws), or as they are (0)."""
  if config.standing_stats <= 0:
    return variables
  return standing_stats(generator, variables, jax.random.PRNGKey(config.seed + 3),
                        config.standing_stats)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255]."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def make_grid(images, ncol: int | None = None, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """(N, H, W, C) images (uint8, or floats in [-1, 1]) -> one (H', W', C) uint8 grid."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  n, h, w, c = images.shape
  ncol = ncol or math.ceil(math.sqrt(n))
  nrow = math.ceil(n / ncol)
  grid = np.full((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c),
                 pad_value, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, ncol)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = img
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a (H, W, 3) uint8 image as PNG (a local path or a URL), creating the folder."""
  from PIL import Image  # noqa: PLC0415
  p = fs.path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("wb") as f:
    Image.fromarray(np.asarray(image)).save(f, format="PNG")


@functools.partial(jax.jit, static_argnums=0)
def discriminate(discriminator, variables, images):
  """D(x) in inference mode: the original's score, a probability per image."""
  return jax.nn.sigmoid(discriminator.apply(variables, images, train=False))


def generate(generator, g_variables, discriminator, d_variables, rng, *, nz: int,
             search_num: int = 512, num: int = 64, mean: float = 0.0, std: float = 1.0,
             chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """The original's generate: ``search_num`` samples of N(mean, std) noise, the ``num``
  D scores highest, best first, as (images in [-1, 1], their scores); ``chunk``
  bounds the samples per call."""
  if not 1 <= num <= search_num:
    raise ConfigError(f"config.gen_num={num}: must be between 1 and config.gen_search_num="
                      f"{search_num}.")
  z = mean + std * jax.random.normal(rng, (search_num, nz))
  images, scores = [], []
  for i in range(0, search_num, chunk):
    x = sample(generator, g_variables, z[i:i + chunk])
    images.append(np.asarray(x))
    scores.append(np.asarray(discriminate(discriminator, d_variables, x)))
  images, scores = np.concatenate(images), np.concatenate(scores)
  best = np.argsort(-scores, kind="stable")[:num]
  return images[best], scores[best]


def slerp(a, b, t):
  """(..., T, nz) points from ``a`` (t=0) to ``b`` (t=1) along the great circle
  (the straight line where they are (anti)parallel)."""
  a, b = np.asarray(a, np.float64)[..., None, :], np.asarray(b, np.float64)[..., None, :]
  t = np.asarray(t, np.float64)[:, None]
  cos = np.sum(a * b, -1, keepdims=True) / (
      np.linalg.norm(a, axis=-1, keepdims=True) * np.linalg.norm(b, axis=-1, keepdims=True))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  so = np.sin(omega)
  safe = np.where(so < 1e-6, 1.0, so)
  out = np.where(so < 1e-6, (1 - t) * a + t * b,
                 np.sin((1 - t) * omega) / safe * a + np.sin(t * omega) / safe * b)
  return out.astype(np.float32)


def interpolation_latents(rng, *, nz: int, rows: int, steps: int, mean: float = 0.0,
                          std: float = 1.0) -> np.ndarray:
  """(rows * steps, nz) latents walking between random points, row-major; rows come
  in pairs sharing end points, one straight, one along the sphere (slerp keeps
  the norm typical of the Gaussian prior)."""
  pairs = (rows + 1) // 2
  ends = np.asarray(mean + std * jax.random.normal(rng, (2, pairs, nz)))
  t = np.linspace(0.0, 1.0, steps)
  lin = (1 - t)[None, :, None] * ends[0][:, None] + t[None, :, None] * ends[1][:, None]
  sph = slerp(ends[0], ends[1], t)
  z = np.stack([lin, sph], axis=1).reshape(2 * pairs, steps, nz)[:rows]
  return z.reshape(rows * steps, nz).astype(np.float32)
