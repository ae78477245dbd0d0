"""Device placement, and the per-replica step mapped over every device of every host.

``train.train_step`` is written for one replica: it sees its share of the
global batch and averages gradients (and BatchNorm statistics) over ``AXIS``.
A ``Runner`` maps it (``config.parallel``): ``'pmap'`` over each host's local
devices, the state carrying a leading device axis; or ``'shard_map'``,
``jax.jit`` of ``jax.shard_map`` over a 1-D mesh of all devices, the state one
replicated global array per leaf. Nothing outside this module depends on which.

Gradient scale. Each replica differentiates its own mean loss and the step
takes ``pmean`` of the gradients. Under pmap the transpose of the ``psum``
inside cross-replica BatchNorm is a ``psum``, so replica j's gradient is
d(sum_i L_i)/d(theta_j), and their mean is exactly the gradient of the
global-batch loss. shard_map runs with ``check_vma=False``, which keeps these
semantics: inside the map the replicated state is an ordinary per-replica
value, so gradients taken there are per-replica (not already summed, as
gradients of replicated inputs taken outside a shard_map are) and the same
``pmean`` is right; with ``check_vma=True`` JAX would insert implicit sums,
for which the custom VJPs of ``conv_ops`` are not typed.
tests/test_distributed.py checks both wrappers on 8 devices against one.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"
DISTRIBUTED_MODES = ("auto", "on", "off")


def cluster_detected(env=os.environ) -> bool:
  """Whether this process looks like one of several: SLURM, Open MPI or a Cloud TPU VM.

  On a TPU VM ``jax.distributed.initialize()`` finds the slice's hosts itself
  (one host forms a harmless 1-process cluster).
  """
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return (importlib.util.find_spec("libtpu") is not None
          and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")))


def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts ``jax.distributed`` before any computation; returns whether it did.

  Args:
    mode: 'on' always (JAX detects what is unset: TPU pods, SLURM, Open MPI,
      Kubernetes); 'off' never; 'auto' when an argument below is given or
      ``cluster_detected()``.
    coordinator_address: 'host:port' of process 0.
    num_processes: processes (hosts) in the job.
    process_id: this process's index.
  """
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f"--distributed={mode!r}: expected one of {DISTRIBUTED_MODES}.")
  explicit = any(a is not None for a in (coordinator_address, num_processes, process_id))
  if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def all_hosts(ok: bool) -> bool:
  """Whether ``ok`` holds on every host (every host must call it at the same point)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).all())


def split_batch(batch_size: int, process_count: int | None = None,
                local_device_count: int | None = None) -> tuple[int, int]:
  """(rows per host, rows per device) of the global batch; ValueError if it does not split."""
  hosts = jax.process_count() if process_count is None else process_count
  local = jax.local_device_count() if local_device_count is None else local_device_count
  n = hosts * local
  if batch_size % n:
    raise ValueError(
        f"config.batch_size={batch_size}: must be divisible by the number of devices "
        f"({n}), e.g. {max(1, batch_size // n) * n}")
  return batch_size // hosts, batch_size // n


# A compiled function takes each argument in a role: 'replicated' (the same on
# every replica: the state, the metrics), 'batch' ((K, host_batch, ...) host
# rows, split over the devices along axis 1) or 'copies' (one copy of a host
# array per device: the images kept there). Every output is replicated.
# Placement uses shardings built once, the ones the compiled function expects,
# so neither it nor placement compiles again.


class Runner:
  """A wrapper's placement (``put_*``, ``get``) and ``compile``."""

  kind = ""

  def put_state(self, tree):
    """Host ``tree`` (equal on every process) -> replicated device arrays."""
    raise NotImplementedError

  def put_batch(self, batch: np.ndarray):
    """This host's (K, host_batch, ...) rows -> split over its devices along axis 1."""
    raise NotImplementedError

  def put_copies(self, array: np.ndarray):
    """This host's ``array`` -> one copy on each of its devices."""
    raise NotImplementedError

  def get(self, tree):
    """Replicated device arrays -> this process's copy, as numpy arrays."""
    raise NotImplementedError

  def compile(self, fn: Callable, roles: tuple[str, ...], donate_argnums=(0,)) -> Callable:
    """``fn(*args)`` per replica, mapped over every device (collectives over ``AXIS``)."""
    raise NotImplementedError


class PmapRunner(Runner):
  """``jax.pmap`` over this host's devices: arrays carry a leading device axis."""

  kind = "pmap"
  _IN_AXES = {"replicated": 0, "batch": 1, "copies": 0}

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
    # computation over every process's devices that only process 0 (drawing
    # grids) would enter on a multi-host run, a deadlock.
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0], tree)

  def compile(self, fn, roles, donate_argnums=(0,)):
    return jax.pmap(fn, axis_name=AXIS, in_axes=tuple(self._IN_AXES[r] for r in roles),
                    donate_argnums=donate_argnums)


class ShardMapRunner(Runner):
  """``jax.jit`` of ``jax.shard_map`` over a 1-D mesh of every device of every host."""

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
    def per_replica(*args):
      # A 'copies' block is (1, ...) per device: the replica's copy is [0].
      return fn(*(jax.tree_util.tree_map(lambda x: x[0], a) if r == "copies" else a
                  for a, r in zip(args, roles, strict=True)))

    # check_vma=False: pmap's per-replica gradient semantics (module doc).
    mapped = jax.shard_map(per_replica, mesh=self.mesh, out_specs=P(), check_vma=False,
                           in_specs=tuple(self._specs[r] for r in roles))
    return jax.jit(mapped, donate_argnums=donate_argnums)


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``AXIS``."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,))


RUNNERS = {r.kind: r for r in (PmapRunner, ShardMapRunner)}
WRAPPERS = tuple(RUNNERS)


def make_runner(kind: str = "pmap") -> Runner:
  """The runner of ``config.parallel``."""
  if kind not in RUNNERS:
    raise ValueError(f"config.parallel={kind!r}: expected one of {WRAPPERS}.")
  return RUNNERS[kind]()
