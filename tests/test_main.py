import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, parse_main_flags
from PIL import Image

TINY = ["--config.ngf=8", "--config.ndf=8", "--config.batch_size=8",
        "--config.synthetic_size=64", "--config.log_every=1", "--config.num_plot=4"]


def _run_main(argv, monkeypatch):
  """Runs main.py's main in-process: config_flags reads overrides from sys.argv."""
  parse_main_flags(["main.py", *argv], monkeypatch).main(["main.py"])


def _scalar_tags(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  (events,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  acc = event_accumulator.EventAccumulator(events, size_guidance={"tensors": 0})
  acc.Reload()
  return {t: [e.step for e in acc.Tensors(t)] for t in acc.Tags()["tensors"]}


def test_main_trains_and_writes_summaries_and_grids(tmp_path, monkeypatch):
  _run_main(["--config=configs/demo.py", f"--workdir={tmp_path}",
             "--config.num_train_steps=4", "--config.plot_every=2", *TINY], monkeypatch)
  tags = _scalar_tags(tmp_path)
  for tag in ("loss_d", "loss_g", "d_real", "d_fake", "samples", "real"):
    assert tag in tags, tags.keys()
  assert tags["loss_d"] == [1, 2, 3, 4]
  assert tags["samples"] == [2, 4]
  pngs = sorted(os.listdir(tmp_path / "samples"))
  assert pngs == ["real_0000002.png", "real_0000004.png",
                  "samples_0000002.png", "samples_0000004.png"]
  assert Image.open(tmp_path / "samples" / "samples_0000004.png").size == (2 + 2 * 98,) * 2


def test_mistyped_config_key_is_named(tmp_path, monkeypatch):
  with pytest.raises(AttributeError, match="batchsize"):
    _run_main(["--config=configs/demo.py", f"--workdir={tmp_path}",
               "--config.batchsize=8"], monkeypatch)


def _subprocess_main(workdir, extra, env=None):
  env = dict(os.environ if env is None else env)
  cmd = [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={workdir}",
         *TINY, *extra]
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                     check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stderr


@pytest.mark.slow
def test_trains_on_8_forced_host_devices(tmp_path):
  log = _subprocess_main(tmp_path, ["--config.num_train_steps=2", "--config.batch_size=16"],
                         dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert "Devices: 8 x cpu" in log and "Batch: 16 (16 per host, 2 per device)" in log
  assert os.path.exists(tmp_path / "samples" / "samples_0000002.png")


def test_trains_on_the_real_faces(tmp_path, shared_faces):
  log = _subprocess_main(tmp_path, [f"--config.dataset={shared_faces}",
                                    "--config.num_train_steps=2"])
  assert "Data: 6000 images in" in log
  assert os.path.exists(tmp_path / "samples" / "samples_0000002.png")


def _quiet_env():
  """The environment of a user who set nothing about logging."""
  env = dict(os.environ)
  for var in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "ABSL_MIN_LOG_LEVEL"):
    env.pop(var, None)
  return env


def test_a_demo_run_prints_a_short_readable_console_and_tensorboard_gets_everything(
    tmp_path):
  cmd = [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={tmp_path}",
         "--config.num_train_steps=60"]
  r = subprocess.run(cmd, cwd=ROOT, env=_quiet_env(), capture_output=True, text=True,
                     timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = (r.stdout + r.stderr).strip().splitlines()
  assert len(lines) <= 12, "\n".join(lines)
  text = "\n".join(lines)
  for want in (f"Training into {tmp_path}. A new run.", "Data: 2048 synthetic faces",
               "Devices: 1 x cpu", "Batch: 32", "Steps: 0 -> 60", f"Grid: {tmp_path}/samples",
               f"Checkpoint: step 60 -> {tmp_path}/checkpoints/60", "Done: step 60 in"):
    assert want in text, text
  # One line per log step (every 50 steps, and the last), with what a reader watches.
  logged = [line for line in lines if re.search(r"\bstep \d+/60\b", line)]
  assert [re.search(r"step (\d+)/60", line)[1] for line in logged] == ["50", "60"], logged
  for line in logged:
    for label in ("img/s", "ETA", "loss_d", "loss_g", "D(x)", "D(G(z))"):
      assert label in line, line
    assert 0 < float(re.search(r"D\(x\) ([0-9.]+)", line)[1]) < 1, line
  assert not re.search(r"orbax|checkpoint_manager|oneDNN|absl::|xla_bridge", text), text
  tags = _scalar_tags(tmp_path)
  for tag in ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "imgs_per_sec",
              "steps_per_sec", "samples", "real"):
    assert tag in tags, sorted(tags)
  assert tags["loss_d"] == [50, 60]


def test_verbose_brings_the_library_lines_back(tmp_path):
  r = subprocess.run([sys.executable, "main.py", "--config=configs/demo.py",
                      f"--workdir={tmp_path}", "--verbose", "--config.num_train_steps=2",
                      *TINY], cwd=ROOT, env=_quiet_env(), capture_output=True, text=True,
                     timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "checkpoint_manager.py" in r.stderr and "Config:" in r.stderr
  assert re.search(r"^I\d{4} .*train\.py", r.stderr, re.M)


def test_rerunning_a_finished_run_says_so_in_one_line_and_exits_0(tmp_path):
  _subprocess_main(tmp_path, ["--config.num_train_steps=2"], _quiet_env())
  again = subprocess.run(
      [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={tmp_path}", *TINY,
       "--config.num_train_steps=2"], cwd=ROOT, env=_quiet_env(), capture_output=True,
      text=True, timeout=600, check=False)
  assert again.returncode == 0, again.stderr[-3000:]
  out = (again.stdout + again.stderr).strip().splitlines()
  assert len(out) == 1 and out[0].endswith(
      "Already trained to step 2 (num_train_steps=2); raise num_train_steps or num_epochs "
      "to train on."), out
  # Raising num_train_steps on a finished run trains on: the first half of
  # tests/test_checkpoints.py::test_resume_is_bit_identical_to_an_uninterrupted_run.


def test_a_signal_in_eval_or_generate_mode_acts_as_usual(monkeypatch):
  import signal

  from dcgan_jax import preemption
  monkeypatch.setattr(preemption, "_defaults", {})
  monkeypatch.setattr(preemption, "_early", [])
  before = signal.getsignal(signal.SIGTERM)
  preemption.catch_early()
  assert signal.getsignal(signal.SIGTERM) is preemption._catch
  preemption.release_early()  # what main.py does outside training
  assert signal.getsignal(signal.SIGTERM) is before
