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
  idx = lax.dynamic_slice_in_dim(order[row], rank * per_device, per_device)
  return images[idx].astype(jnp.float32) * np.float32(1 / 127.5) - np.float32(1)


class DeviceBatches:
  """Endless device batches for a ``parallel.Runner`` from a uint8 array.

  Args:
    images: this host's (N, S, S, 3) uint8 images.
    batch: this host's batch (config.batch_size / process count).
    seed: the data seed (config.seed).
    kind: the runner's wrapper, 'pmap' or 'shard_map'.
    start_step: the first batch (resume).
  """

  def __init__(self, images: np.ndarray, batch: int, seed: int, kind: str,
               start_step: int = 0):
    n_local = jax.local_device_count()
    if batch % n_local:
      raise ValueError(f"the host batch ({batch}) must split evenly over {n_local} "
                       "local devices; pick config.batch_size accordingly.")
    self.num, self.batch, self.seed, self.kind = len(images), batch, seed, kind
    self._host = images
    self.steps_per_epoch = self.num // batch
    self.step = start_step
    per_device = batch // n_local
    ranks = np.arange(n_local, dtype=np.int32)
    devices = jax.local_devices()
    if kind == "pmap":
      self._images = parallel.replicate(images)
      self._ranks = parallel.to_devices(ranks)
      self._put_order = parallel.replicate
      self._fn = jax.pmap(
          lambda im, order, row, rank: _gather(im, order, row, rank, per_device),
          axis_name=parallel.AXIS, in_axes=(0, 0, None, 0))
    elif kind == "shard_map":
      mesh = parallel.make_mesh()
      spec = NamedSharding(mesh, P(parallel.AXIS))
      # One copy per local device, assembled without a host-side stack.
      self._images = jax.make_array_from_single_device_arrays(
          (jax.device_count(), *images.shape), spec,
          [jax.device_put(images[None], d) for d in devices])
      # Local ranks map to devices as put_sharded maps the host batch's rows.
      self._ranks = jax.make_array_from_process_local_data(spec, ranks)
      self._put_order = lambda order: parallel.put_replicated(order, mesh)
      body = jax.shard_map(
          lambda im, order, row, rank: _gather(im[0], order, row, rank[0], per_device),
          mesh=mesh, in_specs=(P(parallel.AXIS), P(), P(), P(parallel.AXIS)),
          out_specs=P(parallel.AXIS), check_vma=False)
      self._fn = jax.jit(body)
    else:
      raise ValueError(f"config.parallel={kind!r}: expected one of {parallel.WRAPPERS}.")
    self._epoch = None
    self._order = None

  def _rows(self, epoch: int) -> np.ndarray:
    """The epoch's batches as rows of indices, each sorted as the host path sorts it."""
    order = input_pipeline.epoch_order(self.num, self.batch, self.seed, epoch)
    return np.sort(order.reshape(self.steps_per_epoch, self.batch), axis=1).astype(np.int32)

  def _order_for(self, epoch: int):
    if epoch != self._epoch:
      self._order, self._epoch = self._put_order(self._rows(epoch)), epoch
    return self._order

  def host_batch(self, step: int) -> np.ndarray:
    """Batch ``step`` gathered on the host (for grids of real images)."""
    epoch, row = divmod(step, self.steps_per_epoch)
    return input_pipeline.to_float(self._host[self._rows(epoch)[row]])

  def __iter__(self) -> Iterator:
    return self

  def __next__(self):
    epoch, row = divmod(self.step, self.steps_per_epoch)
    out = self._fn(self._images, self._order_for(epoch), np.int32(row), self._ranks)
    self.step += 1
    return out
