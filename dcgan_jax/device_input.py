"""The in-memory input path with the images on the devices.

``config.input_on_device = True``: this host's uint8 images are copied once to
each of its local devices (``Runner.put_copies``). A batch is then only its
rows of image indices, (K, host_batch) int32 per call of the step; the step
gathers, converts and normalises the images itself (``gather``), so no image
crosses from the host per step and no computation runs besides the step.

Batch k is the in-memory path's batch k, image for image and device for
device: the rows are ``input_pipeline.index_batches`` sorted as
``input_pipeline.array_batches`` sorts them, and ``Runner.put_batch`` splits
rows over the devices as it splits host images. So a run gives the same
batches with either path and resumes exactly with both.

Memory: the images stay uint8 (96x96 faces: 27 KiB each, 50k = 1.4 GB) on
every local device. On a CPU the "devices" share the host's memory, so this
path mainly saves the host-side float conversion; it is meant for GPUs/TPUs.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from dcgan_jax import input_pipeline


def gather(images, rows):
  """The images of ``rows`` (indices into uint8 ``images``) as float32 in [-1, 1]."""
  return images[rows].astype(jnp.float32) * np.float32(1 / 127.5) - np.float32(1)


def index_rows(num_images: int, batch: int, seed: int,
               start_step: int = 0) -> Iterator[np.ndarray]:
  """Endless sorted int32 index rows: row k holds the images of batch k."""
  for idx in input_pipeline.index_batches(num_images, batch, seed, start_step):
    yield np.sort(idx).astype(np.int32)


def host_images(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """What ``gather`` makes of ``rows``, on the host (the real-image grids)."""
  return input_pipeline.to_float(images[rows])
