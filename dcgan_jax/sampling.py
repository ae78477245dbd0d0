"""Sampling from G and turning images into grids and PNG files.

One sampling path (``sample``: G in inference mode, BatchNorm running
averages) serves the training-time grids, generate and evaluation.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np


@functools.partial(jax.jit, static_argnums=0)
def sample(generator, variables, z):
  """G(z) in inference mode: (B, nz) noise -> (B, 96, 96, 3) in [-1, 1]."""
  return generator.apply(variables, z, train=False)


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
  """Writes a (H, W, 3) uint8 image as PNG, creating the folder."""
  from PIL import Image  # noqa: PLC0415
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(image)).save(path)
