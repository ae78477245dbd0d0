"""Running the per-replica train step over every device of every host.

``train.train_step`` is written for one replica: it sees its share of the
global batch and averages gradients (and BatchNorm statistics) over the mapped
axis ``AXIS``. This module maps it over all devices, two ways
(``config.parallel``):

  * ``'pmap'``: ``jax.pmap`` over each host's local devices; the state carries
    a leading local-device axis and each host feeds its own devices.
  * ``'shard_map'``: ``jax.jit`` of ``jax.shard_map`` over a 1-D mesh of all
    devices (``jax.pmap``'s successor). The state is one replicated global
    array per leaf (``P()``), the batch one global array sharded along
    ``AXIS``, assembled from every host's local batch.

Gradient scale. The step differentiates its replica's loss (the mean over its
share) and takes ``pmean`` of the gradients. Under pmap every value is
per-replica and the transpose of the ``psum`` inside cross-replica BatchNorm
is a ``psum``, so replica j's gradient is d(sum_i L_i)/d(theta_j) and their
mean is exactly the gradient of the global-batch loss. shard_map runs with
``check_vma=False``, which keeps these pmap semantics: inside the map the
replicated state is an ordinary per-replica value, so gradients taken inside
are per-replica (not already summed, as gradients of replicated inputs taken
*outside* a shard_map are) and the same ``pmean`` is right. (With
``check_vma=True`` JAX would insert implicit sums, and the custom VJP of
``models.conv_transpose`` is not typed for it.) tests/test_distributed.py
checks both wrappers on 8 devices against one device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"
WRAPPERS = ("pmap", "shard_map")


# --- multi-host: JAX's own distributed runtime ------------------------------

DISTRIBUTED_MODES = ("auto", "on", "off")


def cluster_detected() -> bool:
  """Whether this process looks like one of several in a cluster job.

  True in a SLURM job step of several tasks, an Open MPI run of several
  ranks, or on a Cloud TPU VM (where ``jax.distributed.initialize()`` finds
  the slice's hosts itself; a single-host slice then forms a 1-process
  cluster, which is harmless).
  """
  env = os.environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  from jax._src import cloud_tpu_init  # noqa: PLC0415 (set when jax is imported)
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts JAX's multi-host runtime (``jax.distributed.initialize``) if asked.

  Must run before any JAX computation.

  Args:
    mode: 'on' always initialises (unset arguments are detected by JAX: TPU
      pods, SLURM, Open MPI, Kubernetes); 'off' never does; 'auto' does when
      any argument below is given or ``cluster_detected()``.
    coordinator_address: 'host:port' of process 0's coordinator service.
    num_processes: the number of processes (hosts) in the job.
    process_id: this process's index in [0, num_processes).

  Returns:
    Whether the distributed runtime was initialised.
  """
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f"--distributed={mode!r}: expected one of {DISTRIBUTED_MODES}.")
  explicit = any(a is not None for a in (coordinator_address, num_processes, process_id))
  if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


# --- pmap: a leading local-device axis -------------------------------------

def to_devices(tree):
  """Host arrays with a leading local-device axis -> one slice per device.

  Placed by a pmap over ``AXIS``, the step's own axis: arrays placed under
  another axis name carry another sharding, and the step would compile a
  second time for them.
  """
  return jax.pmap(lambda x: x, axis_name=AXIS)(tree)


def replicate(tree):
  """Puts one copy of ``tree`` on every local device (leading device axis)."""
  n = jax.local_device_count()
  return to_devices(jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree))


def unreplicate(tree):
  """The copy of a replicated ``tree`` on the first local device."""
  # Through the local shard: indexing the global array (x[0]) would be a
  # computation over every process's devices, which on a multi-host run only
  # process 0 (writing grids) would enter, a deadlock.
  def first(x):
    return x.addressable_data(0)[0] if isinstance(x, jax.Array) else x[0]
  return jax.tree_util.tree_map(first, tree)


def per_device(host_batch: int) -> int:
  """Rows of a host batch of ``host_batch`` rows that each local device gets."""
  n = jax.local_device_count()
  if host_batch % n:
    raise ValueError(f"the host batch ({host_batch}) must split evenly over "
                     f"{n} local devices; pick config.batch_size accordingly.")
  return host_batch // n


def shard(batch: np.ndarray) -> np.ndarray:
  """(local_batch, ...) -> (local_devices, local_batch / local_devices, ...)."""
  return batch.reshape(-1, per_device(batch.shape[0]), *batch.shape[1:])


def put_local(batch: np.ndarray):
  """This host's (local_batch, ...) -> its local devices' shares (pmap layout)."""
  return to_devices(shard(batch))


def pmap_step(step_fn, static_argnums=()):
  """Compiles a per-replica ``step_fn(state, batch, *static)`` with ``jax.pmap``.

  The state (argument 0) is donated: its buffers are reused for the new state.
  """
  return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,),
                  static_broadcasted_argnums=static_argnums)


# --- shard_map: global arrays over a 1-D mesh of all devices ---------------

def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``AXIS``."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,))


def put_replicated(tree, mesh):
  """Host ``tree`` (equal on every process) -> replicated global arrays."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree)


def get_replicated(tree):
  """Replicated global arrays -> this process's copy (single-device arrays)."""
  return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)


def put_sharded(batch: np.ndarray, mesh):
  """This host's (local_batch, ...) -> the global batch sharded over ``AXIS``."""
  per_device(batch.shape[0])
  return jax.make_array_from_process_local_data(
      NamedSharding(mesh, P(AXIS)), batch)


def shard_map_step(step_fn, mesh, static_argnums=()):
  """Compiles a per-replica ``step_fn(state, batch, *static)`` with shard_map.

  The state (replicated, ``P()``) is donated; the batch is sharded along
  ``AXIS``; every output is replicated (the step returns values equal on all
  replicas: pmean'd gradients, statistics and metrics).
  """
  def step(state, batch, *static):
    # check_vma=False: pmap's per-replica gradient semantics (module doc).
    fn = jax.shard_map(lambda s, b: step_fn(s, b, *static), mesh=mesh,
                       in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False)
    return fn(state, batch)

  return jax.jit(step, static_argnums=static_argnums, donate_argnums=(0,))


# --- one entry point for the training loop ----------------------------------

@dataclasses.dataclass(frozen=True)
class Runner:
  """A compiled step plus how to move state and batches on and off devices.

  Attributes:
    step: ``step(dev_state, dev_batch, do_d, do_g) -> (dev_state, dev_metrics)``;
      the state argument is donated.
    put_state: host state (one copy, equal on every process) -> device state.
    put_batch: this host's (local_batch, ...) numpy batch -> device batch.
    get: device state or metrics -> one host copy (single-device arrays).
    kind: 'pmap' or 'shard_map'.
  """

  step: Callable
  put_state: Callable[[Any], Any]
  put_batch: Callable[[np.ndarray], Any]
  get: Callable[[Any], Any]
  kind: str


def make_runner(step_fn, kind: str = "pmap", static_argnums=(2, 3)) -> Runner:
  """Wraps a per-replica ``step_fn(state, batch, do_d, do_g)`` for all devices.

  Args:
    step_fn: the per-replica step (collectives over ``AXIS``).
    kind: ``'pmap'`` or ``'shard_map'`` (``config.parallel``).
    static_argnums: the step's static (Python bool) arguments.

  Returns:
    A ``Runner``.
  """
  if kind == "pmap":
    return Runner(pmap_step(step_fn, static_argnums), replicate, put_local,
                  unreplicate, kind)
  if kind == "shard_map":
    mesh = make_mesh()
    return Runner(shard_map_step(step_fn, mesh, static_argnums),
                  functools.partial(put_replicated, mesh=mesh),
                  functools.partial(put_sharded, mesh=mesh),
                  get_replicated, kind)
  raise ValueError(f"config.parallel={kind!r}: expected one of {WRAPPERS}.")
