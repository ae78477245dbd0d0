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

Everything that places arrays on devices or maps a function over them is
here (``Runner``); nothing outside this module depends on which wrapper runs.

Gradient scale. The step differentiates its replica's loss (the mean over its
share) and takes ``pmean`` of the gradients. Under pmap every value is
per-replica and the transpose of the ``psum`` inside cross-replica BatchNorm
is a ``psum``, so replica j's gradient is d(sum_i L_i)/d(theta_j) and their
mean is exactly the gradient of the global-batch loss. shard_map runs with
``check_vma=False``, which keeps these pmap semantics: inside the map the
replicated state is an ordinary per-replica value, so gradients taken inside
are per-replica (not already summed, as gradients of replicated inputs taken
*outside* a shard_map are) and the same ``pmean`` is right. (With
``check_vma=True`` JAX would insert implicit sums, and the custom VJPs of
``conv_ops`` are not typed for it.) tests/test_distributed.py
checks both wrappers on 8 devices against one device.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"


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


# --- the batch: one split, checked once -------------------------------------

def split_batch(batch_size: int, process_count: int | None = None,
                local_device_count: int | None = None) -> tuple[int, int]:
  """(rows per host, rows per device) of a global batch of ``batch_size``.

  Args:
    batch_size: ``config.batch_size``, the global batch.
    process_count: hosts (default ``jax.process_count()``).
    local_device_count: devices per host (default ``jax.local_device_count()``).

  Raises:
    ValueError: naming ``config.batch_size`` when it does not split evenly.
  """
  hosts = jax.process_count() if process_count is None else process_count
  local = jax.local_device_count() if local_device_count is None else local_device_count
  n = hosts * local
  if batch_size % n:
    raise ValueError(
        f"config.batch_size={batch_size}: must be divisible by the number of devices "
        f"({n}), e.g. {max(1, batch_size // n) * n}")
  return batch_size // hosts, batch_size // n


# --- runners: placement and the mapped step, one per wrapper ----------------
#
# A step compiled by a runner takes arguments in three roles:
#   'replicated': the same value on every replica (the state, the metrics);
#   'batch': (K, host_batch, ...) host arrays, split over the devices along
#     axis 1; each replica sees (K, device_batch, ...);
#   'copies': one copy of a host array per local device (the device-resident
#     images); each replica sees the array;
#   'static': a hashable Python value, compiled in (one program per value).
# Every output is replicated. Placement uses shardings built once: a batch
# placed by ``put_batch`` carries exactly the sharding the step expects, so
# the step never recompiles and no placement compiles anything.


class Runner:
  """A wrapper's placement (``put_*``, ``get``) and its ``compile``.

  Attributes:
    kind: 'pmap' or 'shard_map' (``config.parallel``).
  """

  kind = ""

  def put_state(self, tree):
    """Host ``tree`` (equal on every process) -> replicated device arrays."""
    raise NotImplementedError

  def put_batch(self, batch: np.ndarray):
    """This host's (K, host_batch, ...) rows -> split over its devices (axis 1)."""
    raise NotImplementedError

  def put_copies(self, array: np.ndarray):
    """This host's ``array`` -> one copy on each of its devices."""
    raise NotImplementedError

  def get(self, tree):
    """Replicated device arrays -> this process's copy, as numpy arrays."""
    raise NotImplementedError

  def compile(self, fn: Callable, roles: tuple[str, ...], donate_argnums=(0,)) -> Callable:
    """Maps the per-replica ``fn(*args)`` over every device (collectives over ``AXIS``).

    Args:
      fn: the per-replica function; every output is the same on all replicas.
      roles: one of 'replicated', 'batch', 'copies', 'static' per argument.
      donate_argnums: arguments whose buffers the outputs reuse.
    """
    raise NotImplementedError


def _statics(roles) -> tuple[int, ...]:
  return tuple(i for i, r in enumerate(roles) if r == "static")


class PmapRunner(Runner):
  """``jax.pmap`` over this host's devices: arrays carry a leading device axis."""

  kind = "pmap"
  _IN_AXES = {"replicated": 0, "batch": 1, "copies": 0, "static": None}

  def __init__(self):
    devices = jax.local_devices()
    self._n = len(devices)
    # What jax.pmap itself gives its outputs (and takes without a copy).
    mesh = Mesh(np.array(devices), (AXIS,))
    self._lead = NamedSharding(mesh, P(AXIS))
    self._second = NamedSharding(mesh, P(None, AXIS))

  def _broadcast(self, x):
    x = np.asarray(x)
    return np.broadcast_to(x, (self._n, *x.shape))

  def put_state(self, tree):
    return jax.device_put(jax.tree_util.tree_map(self._broadcast, tree), self._lead)

  def put_batch(self, batch):
    k, rows = batch.shape[:2]
    return jax.device_put(batch.reshape(k, self._n, rows // self._n, *batch.shape[2:]),
                          self._second)

  def put_copies(self, array):
    return jax.device_put(self._broadcast(array), self._lead)

  def get(self, tree):
    # The first local replica only: reading the global array would be a
    # computation over every process's devices, which on a multi-host run
    # only process 0 (writing grids) would enter, a deadlock.
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0], tree)

  def compile(self, fn, roles, donate_argnums=(0,)):
    return jax.pmap(fn, axis_name=AXIS, in_axes=tuple(self._IN_AXES[r] for r in roles),
                    donate_argnums=donate_argnums, static_broadcasted_argnums=_statics(roles))


class ShardMapRunner(Runner):
  """``jax.jit`` of ``jax.shard_map`` over a 1-D mesh of every device of every host.

  The state is one replicated global array per leaf (``P()``), the batch one
  global array sharded along ``AXIS`` (axis 1), assembled from every host's
  rows.
  """

  kind = "shard_map"

  def __init__(self):
    self.mesh = make_mesh()
    self._specs = {"replicated": P(), "batch": P(None, AXIS), "copies": P(AXIS)}
    self._shardings = {r: NamedSharding(self.mesh, s) for r, s in self._specs.items()}

  def put_state(self, tree):
    sharding = self._shardings["replicated"]

    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree_util.tree_map(put, tree)

  def put_batch(self, batch):
    return jax.make_array_from_process_local_data(self._shardings["batch"], batch)

  def put_copies(self, array):
    local = np.broadcast_to(array, (jax.local_device_count(), *array.shape))
    return jax.make_array_from_process_local_data(self._shardings["copies"], local)

  def get(self, tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def compile(self, fn, roles, donate_argnums=(0,)):
    statics = _statics(roles)
    mapped_roles = [r for r in roles if r != "static"]

    def call(*args):
      static = {i: args[i] for i in statics}

      def per_replica(*mapped):
        # A 'copies' block is (1, ...) per device: the replica's copy is [0].
        it = iter(jax.tree_util.tree_map(lambda x: x[0], a) if r == "copies" else a
                  for a, r in zip(mapped, mapped_roles, strict=True))
        return fn(*(static[i] if i in static else next(it) for i in range(len(roles))))

      # check_vma=False: pmap's per-replica gradient semantics (module doc).
      return jax.shard_map(per_replica, mesh=self.mesh,
                           in_specs=tuple(self._specs[r] for r in mapped_roles),
                           out_specs=P(), check_vma=False)(
          *(a for i, a in enumerate(args) if i not in static))

    return jax.jit(call, static_argnums=statics, donate_argnums=donate_argnums)


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``AXIS``."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,))


RUNNERS = {r.kind: r for r in (PmapRunner, ShardMapRunner)}
WRAPPERS = tuple(RUNNERS)


def make_runner(kind: str = "pmap") -> Runner:
  """The runner of ``config.parallel`` (``'pmap'`` or ``'shard_map'``)."""
  if kind not in RUNNERS:
    raise ValueError(f"config.parallel={kind!r}: expected one of {WRAPPERS}.")
  return RUNNERS[kind]()
