"""Running the per-replica train step over devices.

``train.train_step`` is written for one replica: it sees its local share of
the batch and averages gradients (and BatchNorm statistics) over the mapped
axis ``AXIS``. This module maps it over the local devices.
"""

from __future__ import annotations

import jax
import numpy as np

AXIS = "batch"


def replicate(tree):
  """Puts one copy of ``tree`` on every local device (leading device axis)."""
  n = jax.local_device_count()
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
  return jax.pmap(lambda x: x)(stacked)


def unreplicate(tree):
  """The copy of a replicated ``tree`` on the first local device."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def shard(batch: np.ndarray) -> np.ndarray:
  """(local_batch, ...) -> (local_devices, local_batch / local_devices, ...)."""
  n = jax.local_device_count()
  if batch.shape[0] % n:
    raise ValueError(f"the host batch ({batch.shape[0]}) must split evenly over "
                     f"{n} local devices; pick config.batch_size accordingly.")
  return batch.reshape(n, batch.shape[0] // n, *batch.shape[1:])


def pmap_step(step_fn, static_argnums=()):
  """Compiles a per-replica ``step_fn(state, batch, *static)`` with ``jax.pmap``.

  The state (argument 0) is donated: its buffers are reused for the new state.
  """
  return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,),
                  static_broadcasted_argnums=static_argnums)
