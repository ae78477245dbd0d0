"""Data parallelism over devices and hosts (issue 4).

Device counts are fixed when JAX starts, so every run here is a subprocess of
tests/dist_worker.py: 1 vs 8 forced CPU devices for the step equivalence, and
a real 2-process cluster on 127.0.0.1 (JAX's distributed runtime, gloo CPU
collectives) for multi-host training.
"""

import concurrent.futures
import functools
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

WORKER = os.path.join(ROOT, "tests", "dist_worker.py")


def _env(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _start(args, devices: int) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, WORKER, *map(str, args)], cwd=ROOT,
                          env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"{proc.args} timed out:\n{out[-3000:]}")
  assert proc.returncode == 0, out[-3000:]
  return out


@functools.cache
def _steps(tmp: str) -> tuple[dict, dict]:
  """The 1-device and 8-device runs of ``dist_worker.py steps``, side by side."""
  paths = {n: os.path.join(tmp, f"steps{n}.npz") for n in (1, 8)}
  procs = {n: _start(["steps", p], n) for n, p in paths.items()}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(_finish, procs.values()))
  return tuple(dict(np.load(paths[n])) for n in (1, 8))


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
  return _steps(str(tmp_path_factory.mktemp("steps")))


def _max_diff(a: dict, b: dict, prefix_a: str, prefix_b: str | None = None) -> float:
  keys = [k for k in a if k.startswith(prefix_a)]
  assert keys, prefix_a
  return max(float(np.abs(a[k].astype(np.float64) -
                          b[k.replace(prefix_a, prefix_b or prefix_a, 1)]).max())
             for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
@pytest.mark.parametrize("step", [1, 2, 3])
def test_8_devices_match_1_device(steps, kind, step):
  """Same new state (params, BN statistics, Adam moments) on 1 and 8 devices.

  Global batch 32 (4 per device on 8), g_every=2: steps 1 and 3 update D and
  G, step 2 only D. With global BatchNorm statistics and pmean'd per-replica
  gradients the device count must not matter beyond float rounding.
  """
  one, eight = steps
  prefix = f"{kind}/{step}/"
  assert int(one[prefix + "[0]"]) == int(eight[prefix + "[0]"]) == step
  assert _max_diff(one, eight, prefix) < 2e-6


@pytest.mark.slow
def test_the_compared_states_differ_from_step_to_step(steps):
  one, _ = steps
  assert _max_diff(one, one, "pmap/1/", "pmap/2/") > 1e-4
  assert _max_diff(one, one, "pmap/2/", "pmap/3/") > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])
def test_shard_map_matches_pmap(steps, devices):
  run = steps[devices == 8]
  for step in (1, 2, 3):
    assert _max_diff(run, run, f"shard_map/{step}/", f"pmap/{step}/") < 1e-6


@pytest.mark.slow
def test_per_device_batch_stats_depend_on_the_device_count(steps):
  """sync_batch_stats=False: per-device statistics, by design not equal."""
  one, eight = steps
  # On one device per-device statistics are the global ones...
  assert _max_diff(one, one, "pmap_nosync/1/", "pmap/1/") < 2e-6
  # ...on 8 devices of 4 images each they are not, and training differs.
  assert _max_diff(eight, eight, "pmap_nosync/1/", "pmap/1/") > 1e-3
  assert _max_diff(one, eight, "pmap_nosync/1/") > 1e-3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cluster(tmp_path, kind: str, processes: int = 2, devices: int = 2):
  """Trains the tiny demo on a local cluster; returns each process's state."""
  addr = f"127.0.0.1:{_free_port()}"
  prefix = tmp_path / "state"
  procs = [_start(["cluster", prefix, tmp_path / "work", addr, processes, i, kind],
                  devices) for i in range(processes)]
  with concurrent.futures.ThreadPoolExecutor(processes) as pool:
    list(pool.map(_finish, procs))
  return [dict(np.load(f"{prefix}{i}.npz")) for i in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_two_process_cluster_trains_identically_and_resumes_in_one(tmp_path, kind):
  """2 processes x 2 CPU devices, each reading its own data shard, 4 steps.

  Then one process on one device resumes the run from its checkpoint.
  """
  p0, p1 = _cluster(tmp_path, kind)
  assert list(p0["devices"]) == list(p1["devices"]) == [4, 2]
  assert int(p0["[0]"]) == int(p1["[0]"]) == 4
  assert set(p0) == set(p1)
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
  # Only process 0 writes summaries and sample grids (both share the workdir).
  work = tmp_path / "work"
  assert len([n for n in os.listdir(work) if n.startswith("events")]) == 1
  assert sorted(os.listdir(work / "samples")) == ["real_0000004.png", "samples_0000004.png"]
  assert sorted(os.listdir(work / "checkpoints")) == ["4"]

  # The checkpoint the cluster wrote restores in a single process and training
  # continues from step 4 to step 6.
  out = tmp_path / "resume.npz"
  _finish(_start(["resume", out, work, kind], 1))
  r = dict(np.load(out))
  for k in p0:
    if k != "devices":
      np.testing.assert_array_equal(r[f"restored/{k}"], p0[k], err_msg=k)
  assert int(r["resumed/[0]"]) == 6
  assert _max_diff(r, r, "resumed/", "restored/") > 1e-4
  assert sorted(os.listdir(work / "checkpoints")) == ["4", "6"]


def test_initialize_distributed_only_when_asked_or_on_a_cluster(monkeypatch):
  from dcgan_jax import parallel
  for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(parallel.jax.distributed, "initialize",
                      lambda **kw: calls.append(kw))
  assert not parallel.initialize_distributed("auto")  # a plain single machine
  assert not parallel.initialize_distributed("off", "127.0.0.1:1", 2, 0)
  assert calls == []
  assert parallel.initialize_distributed("auto", "127.0.0.1:1234", 2, 1)
  assert calls[-1] == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                       "process_id": 1}
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "16")
  assert parallel.initialize_distributed("auto")  # SLURM: JAX fills in the rest
  assert calls[-1] == {"coordinator_address": None, "num_processes": None,
                       "process_id": None}
  with pytest.raises(ValueError, match="--distributed='yes'"):
    parallel.initialize_distributed("yes")
