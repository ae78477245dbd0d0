import glob
import os
import subprocess
import sys

import pytest
from absl import flags
from conftest import ROOT
from PIL import Image

TINY = ["--config.ngf=8", "--config.ndf=8", "--config.batch_size=8",
        "--config.synthetic_size=64", "--config.log_every=1", "--config.num_plot=4"]


def _run_main(argv, monkeypatch):
  """Runs main.py's main in-process: config_flags reads overrides from sys.argv."""
  argv = ["main.py", *argv]
  monkeypatch.setattr(sys, "argv", argv)
  import main
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  main.main(["main.py"])


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
  with pytest.raises(Exception, match="batchsize"):
    _run_main(["--config=configs/demo.py", f"--workdir={tmp_path}",
               "--config.batchsize=8"], monkeypatch)


def _subprocess_main(workdir, extra, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  cmd = [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={workdir}",
         *TINY, *extra]
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                     check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stderr


def test_trains_on_8_forced_host_devices(tmp_path):
  log = _subprocess_main(tmp_path, ["--config.num_train_steps=2", "--config.batch_size=16"],
                         {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert "on 8 device(s)" in log
  assert os.path.exists(tmp_path / "samples" / "samples_0000002.png")


def test_trains_on_the_real_faces(tmp_path, shared_faces):
  log = _subprocess_main(tmp_path, [f"--config.dataset={shared_faces}",
                                    "--config.num_train_steps=2"])
  assert "6000 images in" in log
  assert os.path.exists(tmp_path / "samples" / "samples_0000002.png")
