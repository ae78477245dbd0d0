"""The training loop as main.py runs it: nothing compiles, grows or runs eagerly per step."""

import collections
import gc
import glob
import gzip
import json
import os

import jax
import pytest
from conftest import COMPILATIONS, tiny_config

from dcgan_jax import train


@pytest.fixture
def at_log_steps(monkeypatch):
  """{logged step: (compilations so far, live JAX arrays)} of the next run."""
  from clu import metric_writers
  records, create = {}, metric_writers.create_default_writer

  def create_recording(*args, **kwargs):
    writer = create(*args, **kwargs)
    write = writer.write_scalars

    def write_scalars(step, scalars):
      if "loss_d" in scalars:
        gc.collect()
        records[int(step)] = (len(COMPILATIONS), len(jax.live_arrays()))
      return write(step, scalars)
    writer.write_scalars = write_scalars
    return writer
  monkeypatch.setattr(metric_writers, "create_default_writer", create_recording)
  return records


@pytest.mark.parametrize("kind,on_device,per_call", [
    ("pmap", False, 1), ("pmap", True, 1), ("shard_map", False, 1), ("shard_map", True, 1),
    pytest.param("pmap", False, 2, marks=pytest.mark.slow)])
def test_a_second_round_of_periodic_work_compiles_nothing_and_holds_nothing_more(
    tmp_path, at_log_steps, kind, on_device, per_call):
  # Logs every 2 steps, grids and checkpoints every 4: by the log at step 6 each
  # has run once (at 4); between it and the log at 10 each runs again (at 8).
  config = tiny_config(num_train_steps=12, log_every=2, plot_every=4, save_every_steps=4,
                       parallel=kind, input_on_device=on_device,
                       **({"steps_per_call": per_call} if per_call > 1 else {}))
  train.train_and_evaluate(config, str(tmp_path))
  assert sorted(at_log_steps) == [2, 4, 6, 8, 10, 12]
  (compiles_6, live_6), (compiles_10, live_10) = at_log_steps[6], at_log_steps[10]
  assert compiles_10 == compiles_6, at_log_steps
  assert live_10 <= live_6, at_log_steps
  gc.collect()
  assert len(jax.live_arrays()) <= live_6  # and nothing is left once the run is over
  assert os.path.exists(tmp_path / "samples" / "samples_0000008.png")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "4", "8"]


def _executions(config, workdir) -> int:
  """Computations executed by a whole ``train_and_evaluate`` run (a profiler trace)."""
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  with jax.profiler.trace(str(workdir / "trace"), profiler_options=options):
    train.train_and_evaluate(config, str(workdir / "run"))
  (path,) = glob.glob(str(workdir / "trace" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
  with gzip.open(path) as f:
    names = collections.Counter(e["name"] for e in json.load(f)["traceEvents"]
                                if e.get("ph") == "X")
  return sum(n for name, n in names.items()
             if name.startswith("CommonPjRtLoadedExecutable::ExecuteHelper"))


@pytest.mark.parametrize("on_device", [False, True])
def test_an_ordinary_step_is_one_computation(tmp_path, on_device):
  # Two runs whose periodic work all happens at their last step: the longer
  # one differs only by ordinary steps, each one compiled call (placing the
  # next batch is a transfer, not a computation).
  runs = {}
  for n in (4, 8):
    config = tiny_config(num_train_steps=n, log_every=n, plot_every=n, save_every_steps=n,
                         input_on_device=on_device)
    runs[n] = _executions(config, tmp_path / str(n))
  assert runs[8] - runs[4] == 4, runs
