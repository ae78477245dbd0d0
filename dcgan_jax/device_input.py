"""The in-memory input path with the images on the devices.

``config.input_on_device = True``: this host's uint8 images are copied once to
each of its local devices; every batch is then gathered, converted to float
and normalised there, so no image crosses from the host per step (only the
epoch's index order, once per epoch, and a row number per step).

Batch k is the in-memory path's batch k, image for image and device for
device (``input_pipeline.epoch_order``, each row sorted as
``input_pipeline.array_batches`` sorts it, and the host batch split over the
local devices as ``Runner.put_batch`` splits it), so a run gives the same
batches with either path and resumes exactly with both.

Memory: the images stay uint8 (96x96 faces: 27 KiB each, 50k = 1.4 GB) on
every local device. On a CPU the "devices" share the host's memory, so this
path mainly saves the host-side float conversion; it is meant for GPUs/TPUs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dcgan_jax import input_pipeline, parallel


def _gather(images, order, row, rank, per_device: int):
  """This device's share of batch ``row``: float32 in [-1, 1]."""
  idx = lax.dynamic_slice_in_dim(order[row], rank[0] * per_device, per_device)
  return images[idx].astype(jnp.float32) * np.float32(1 / 127.5) - np.float32(1)


class DeviceBatches:
  """Endless device batches for a ``parallel.Runner`` from a uint8 array.

  Args:
    images: this host's (N, S, S, 3) uint8 images.
    batch: this host's batch (config.batch_size / process count).
    seed: the data seed (config.seed).
    runner: the training ``parallel.Runner``: its wrapper maps the gather, its
      ``put_state`` replicates the index order and its ``put_batch`` gives each
      device its rank, so the shares land as ``put_batch`` puts host batches.
    start_step: the first batch (resume).
  """

  def __init__(self, images: np.ndarray, batch: int, seed: int, runner: parallel.Runner,
               start_step: int = 0):
    per_device = parallel.per_device(batch)
    self._images_host, self.batch, self.seed = images, batch, seed
    self.steps_per_epoch = len(images) // batch
    self.step = start_step
    self._put_order = runner.put_state
    self._ranks = runner.put_batch(np.arange(jax.local_device_count(), dtype=np.int32))
    gather = functools.partial(_gather, per_device=per_device)
    if runner.kind == "pmap":
      self._images = parallel.replicate(images)
      self._fn = jax.pmap(gather, axis_name=parallel.AXIS, in_axes=(0, 0, None, 0))
    else:  # shard_map (make_runner accepts no other wrapper)
      mesh = parallel.make_mesh()
      # A copy per local device, as a global array sharded over the devices
      # (this host's images differ from other hosts': not a replicated array).
      self._images = jax.make_array_from_single_device_arrays(
          (jax.device_count(), *images.shape), NamedSharding(mesh, P(parallel.AXIS)),
          [jax.device_put(images[None], d) for d in jax.local_devices()])
      self._fn = jax.jit(jax.shard_map(
          lambda im, *rest: gather(im[0], *rest), mesh=mesh,
          in_specs=(P(parallel.AXIS), P(), P(), P(parallel.AXIS)),
          out_specs=P(parallel.AXIS), check_vma=False))
    self._epoch, self._order = None, None

  def _order_for(self, epoch: int):
    """The epoch's batches as rows of indices on the devices (once per epoch)."""
    if epoch != self._epoch:
      order = input_pipeline.epoch_order(len(self._images_host), self.batch, self.seed, epoch)
      # Rows sorted as array_batches sorts each batch.
      rows = np.sort(order.reshape(self.steps_per_epoch, self.batch), axis=1)
      self._order, self._epoch = self._put_order(rows.astype(np.int32)), epoch
    return self._order

  def host_batch(self, step: int) -> np.ndarray:
    """Batch ``step`` gathered on the host (for grids of real images)."""
    return next(input_pipeline.array_batches(self._images_host, self.batch, self.seed, step))

  def __iter__(self) -> Iterator:
    return self

  def __next__(self):
    epoch, row = divmod(self.step, self.steps_per_epoch)
    out = self._fn(self._images, self._order_for(epoch), np.int32(row), self._ranks)
    self.step += 1
    return out
