import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import flax
import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config

from dcgan_jax import checkpoints, errors, preemption, schedule, train

TINY = ["--config=configs/demo.py", "--config.ngf=8", "--config.ndf=8",
        "--config.batch_size=8", "--config.synthetic_size=64", "--config.log_every=1",
        "--config.num_plot=4", "--config.plot_every=1000000"]


def _arrays(state):
  return jax.tree_util.tree_leaves_with_path(flax.serialization.to_state_dict(state))


def _assert_bit_identical(a, b):
  la, lb = _arrays(a), _arrays(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb, strict=True):
    xa, ya = np.asarray(x), np.asarray(y)
    assert xa.dtype == ya.dtype and np.array_equal(xa, ya), jax.tree_util.keystr(path)


# g_every=2 alternates steps with and without G (d_every=1). Both are slow
# (~2.5 min): CI runs them with -m slow.
@pytest.mark.slow
@pytest.mark.parametrize("g_every", [2, 1])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, caplog, g_every):
  caplog.set_level(logging.INFO)
  n = 3  # odd: with g_every=2 the run stops after a step that skipped G
  cfg = lambda steps, **kw: tiny_config(num_train_steps=steps, g_every=g_every,
                                        plot_every=100, **kw)
  straight = train.train_and_evaluate(cfg(2 * n, save_every_steps=1, max_to_keep=2),
                                      str(tmp_path / "straight"))
  assert int(straight.step) == 2 * n
  # max_to_keep: only the newest two of the six saves remain.
  assert checkpoints.Checkpoints(str(tmp_path / "straight" / "checkpoints")).all_steps() \
      == [2 * n - 1, 2 * n]

  first = train.train_and_evaluate(cfg(n), str(tmp_path / "a"))
  assert int(first.step) == n
  assert "Resumed" not in caplog.text
  resumed = train.train_and_evaluate(cfg(2 * n), str(tmp_path / "a"))
  assert f"Resumed from step {n} " in caplog.text
  _assert_bit_identical(resumed, straight)
  # The state actually moved between n and 2n (the comparison is not vacuous).
  assert not np.array_equal(first.g.params["convt0"]["kernel"],
                            resumed.g.params["convt0"]["kernel"])

  if g_every == 2:
    # init_from: a new workdir starts from step n of run a, and continues exactly.
    branched = train.train_and_evaluate(
        cfg(2 * n, init_from=str(tmp_path / "a" / "checkpoints" / str(n))),
        str(tmp_path / "b"))
    assert f"Initialised from step {n} of" in caplog.text
    _assert_bit_identical(branched, straight)


def test_restore_with_other_model_sizes_names_the_keys(tmp_path):
  config = tiny_config(num_train_steps=1)
  train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(errors.CheckpointError, match=r"ngf=8 \(config: 16\)"):
    train.train_and_evaluate(tiny_config(num_train_steps=2, ngf=16), str(tmp_path))
  with pytest.raises(errors.CheckpointError, match="does not exist"):
    checkpoints.open_for_reading(str(tmp_path / "nowhere"))


def test_a_resize_generator_is_a_model_key_and_older_checkpoints_read_as_transpose(tmp_path):
  from dcgan_jax.samples import generate
  resize = tiny_config(num_train_steps=1, g_upsample="resize")
  trained = train.train_and_evaluate(resize, str(tmp_path / "r"))
  with pytest.raises(errors.CheckpointError, match=r"g_upsample=resize \(config: transpose\)"):
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "r"))
  # Sampling takes the model keys from the checkpoint, whatever the config says.
  m = generate.load_models(tiny_config(), str(tmp_path / "r"))
  assert m.config.g_upsample == "resize" and "conv4" in m.g_variables["params"]
  assert np.array_equal(m.g_variables["params"]["conv4"]["kernel"],
                        trained.g.params["conv4"]["kernel"])
  with pytest.raises(errors.ConfigError, match="g_upsample='resize'"):
    generate.export_torch(m, str(tmp_path / "r"))
  # A checkpoint written before the key existed restores as the original's G.
  train.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path / "t"))
  def says_g_upsample(path):
    with open(path, errors="ignore") as f:
      return '"g_upsample"' in f.read()
  saved = [p for p in (tmp_path / "t" / "checkpoints" / "1").rglob("*")
           if p.is_file() and says_g_upsample(p)]
  assert len(saved) == 1
  with open(saved[0]) as f:
    config = json.load(f)
  assert config.pop("g_upsample") == "transpose"
  with open(saved[0], "w") as f:
    json.dump(config, f)
  ckpts = checkpoints.Checkpoints(str(tmp_path / "t" / "checkpoints"), read_only=True)
  with ckpts:
    assert ckpts.config(1)["g_upsample"] == "transpose"
  train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "t"))


def test_the_schedule_counts_epochs_where_the_config_says_minus_one():
  plan = schedule.Schedule.of(tiny_config(save_every_steps=-1, num_train_steps=-1,
                                          num_epochs=3), 8)
  assert (plan.total, plan.save_every) == (24, 80)
  plan = schedule.Schedule.of(tiny_config(save_every_steps=5, num_train_steps=7), 8)
  assert (plan.total, plan.save_every) == (7, 5)
  assert plan.due(5) == schedule.Due(log=True, save=True)
  assert plan.due(7) == schedule.Due(log=True, grid=True, save=True)  # the end
  assert not plan.due(4).save and not plan.with_fid(2).due(5).fid and plan.with_fid(2).due(4).fid


def test_second_signal_exits_at_once(monkeypatch):
  exits = []
  monkeypatch.setattr(preemption, "_exit", exits.append)
  with preemption.StopSignal() as stop:
    assert not stop.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.should_stop() and stop.name == "SIGTERM" and exits == []
    os.kill(os.getpid(), signal.SIGINT)
    assert exits == [128 + signal.SIGINT]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.fixture(scope="module")
def jax_cache_env(tmp_path_factory):
  """A persistent XLA cache shared by this module's subprocesses: one compiles, the rest reuse."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _start_main(workdir, extra, log, env, script=None):
  args = [*TINY, *extra, f"--workdir={workdir}"]  # the workdir last: the script reads it
  cmd = ([sys.executable, "-c", script, *args] if script
         else [sys.executable, "main.py", *args])
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=open(log, "w"))  # noqa: SIM115 (closed with the process)


def _wait_for(pattern, log, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if m := re.search(pattern, open(log).read()):
      return m
    if proc.poll() is not None:
      raise AssertionError(f"exited {proc.returncode} before {pattern!r}:\n"
                           + open(log).read()[-3000:])
    time.sleep(0.2)
  proc.kill()
  raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + open(log).read()[-3000:])


def _run_main(workdir, extra, env):
  r = subprocess.run([sys.executable, "main.py", *TINY, f"--workdir={workdir}", *extra],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stderr


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_rerun_resumes(tmp_path, jax_cache_env):
  log = tmp_path / "log"
  proc = _start_main(tmp_path, ["--config.num_train_steps=100000"], log, jax_cache_env)
  _wait_for(r"step \d+/\d+ .*loss_d", log, proc)  # training is under way
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  text = open(log).read()
  m = re.search(r"Stopped by SIGTERM after step (\d+); checkpoint saved to (\S+)\.", text)
  assert m, text[-3000:]
  step = int(m.group(1))
  assert m.group(2) == str(tmp_path / "checkpoints" / str(step))
  assert checkpoints.Checkpoints(str(tmp_path / "checkpoints")).all_steps() == [step]

  out = _run_main(tmp_path, [f"--config.num_train_steps={step + 2}"], jax_cache_env)
  assert f"Resumed from step {step} " in out
  assert checkpoints.Checkpoints(str(tmp_path / "checkpoints")).all_steps() == [step, step + 2]


# Runs main.py with orbax's final rename (the commit of a checkpoint) made to
# hang once one checkpoint exists: the parent kills the process there.
_HANG_IN_SECOND_SAVE = textwrap.dedent("""
    import os, sys, time
    from orbax.checkpoint._src.path import atomicity
    sys.argv[0] = "main.py"
    cls = atomicity.AtomicRenameTemporaryPath
    finalize = cls.finalize
    async def hang_if_second(self, *args, **kwargs):
      root = os.path.join(sys.argv[-1].split("=", 1)[1], "checkpoints")
      if any(n.isdigit() for n in os.listdir(root)):
        print("HANGING IN SAVE", file=sys.stderr, flush=True)
        time.sleep(600)
      return await finalize(self, *args, **kwargs)
    cls.finalize = hang_if_second
    import main
    from absl import app
    app.run(main.main)
""")


@pytest.mark.slow
def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, jax_cache_env):
  workdir, log = tmp_path / "w", tmp_path / "log"
  args = ["--config.num_train_steps=4", "--config.save_every_steps=2"]
  proc = _start_main(workdir, args, log, jax_cache_env, _HANG_IN_SECOND_SAVE)
  _wait_for("HANGING IN SAVE", log, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  ckdir = workdir / "checkpoints"
  leftovers = [n for n in os.listdir(ckdir) if "tmp" in n]
  assert leftovers and leftovers[0].startswith("4."), os.listdir(ckdir)  # killed mid-save
  assert checkpoints.Checkpoints(str(ckdir), read_only=True).all_steps() == [2]

  out = _run_main(workdir, args, jax_cache_env)
  assert "Resumed from step 2 " in out
  assert sorted(os.listdir(ckdir)) == ["2", "4"]  # the stray tmp folder is gone


def _files(root) -> dict[str, float]:
  return {os.path.relpath(os.path.join(d, n), root): os.stat(os.path.join(d, n)).st_mtime_ns
          for d, _, names in os.walk(root) for n in names}


def test_a_rerun_of_a_finished_run_reads_no_data_writes_nothing_and_says_so(
    tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  steps = tiny_config(num_train_steps=3)
  epochs = tiny_config(num_train_steps=-1, num_epochs=1)  # 64 faces / batch 8: 8 steps
  first = train.train_and_evaluate(steps, str(tmp_path / "s"))
  train.train_and_evaluate(epochs, str(tmp_path / "e"))
  before = _files(tmp_path)
  # The check comes before the data, the summary writer and the step.
  monkeypatch.setattr(train.input_pipeline, "create_input", lambda *a, **k: pytest.fail("data"))
  monkeypatch.setattr(train, "make_train_call", lambda *a: pytest.fail("compiled"))
  caplog.clear()
  again = train.train_and_evaluate(steps, str(tmp_path / "s"))
  assert "Already trained to step 3 (num_train_steps=3); raise num_train_steps or " \
      "num_epochs to train on." in caplog.text
  _assert_bit_identical(again, first)
  # Counted in epochs, the checkpoint knows the steps per epoch.
  train.train_and_evaluate(epochs, str(tmp_path / "e"))
  assert "Already trained to step 8 (num_epochs=1: 8 steps); raise num_train_steps" in caplog.text
  assert _files(tmp_path) == before


def test_init_from_a_finished_run_trains_nothing_and_more_steps_train_on(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "a"))
  b = tmp_path / "b"
  state = train.train_and_evaluate(
      tiny_config(num_train_steps=2, init_from=str(tmp_path / "a")), str(b))
  assert int(state.step) == 2 and "Already trained to step 2" in caplog.text
  assert not [n for n in os.listdir(b) if n.startswith("events")]
  assert checkpoints.Checkpoints(str(b / "checkpoints")).all_steps() == []
  longer = train.train_and_evaluate(tiny_config(num_train_steps=3), str(tmp_path / "a"))
  assert int(longer.step) == 3 and "Resumed from step 2 " in caplog.text


# A SIGTERM while main.py is still importing (caught by preemption.catch_early),
# and one while it loads the data: both end with status 0 and a clear line.
_SIGTERM_AT = textwrap.dedent("""
    import os, signal, sys
    sys.argv[0] = "main.py"
    when = sys.argv.pop(1)
    from dcgan_jax import preemption
    preemption.catch_early()
    if when == "import":
      os.kill(os.getpid(), signal.SIGTERM)
    import main
    from dcgan_jax.data import input_pipeline
    real = input_pipeline.create_input
    def create_input(*args, **kwargs):
      if when == "data":
        os.kill(os.getpid(), signal.SIGTERM)
      return real(*args, **kwargs)
    input_pipeline.create_input = create_input
    from absl import app
    app.run(main.main)
""")


@pytest.mark.parametrize("when", ["import", "data"])
def test_a_sigterm_during_start_up_ends_cleanly(tmp_path, jax_cache_env, when):
  r = subprocess.run([sys.executable, "-c", _SIGTERM_AT, when, *TINY,
                      "--config.num_train_steps=3", f"--workdir={tmp_path}"],
                     cwd=ROOT, env=jax_cache_env, capture_output=True, text=True, timeout=600,
                     check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Stopped by SIGTERM during start-up, before training step 1: nothing new to " \
      "save. Rerun with the same workdir to start." in r.stderr, r.stderr[-3000:]
  assert not os.path.exists(tmp_path / "checkpoints" / "3")
