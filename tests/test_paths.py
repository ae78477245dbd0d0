"""Workdirs and datasets in buckets, and sharing a model back to the PyTorch original."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config
from etils import epath
from PIL import Image

from dcgan_jax import checkpoints, errors, fs, train, workdir
from dcgan_jax.data import input_pipeline
from dcgan_jax.samples import generate, sampling

BUCKET = "gs://fake-bucket"
OFFLINE = {  # TensorFlow's GCS client fails at once instead of retrying
    "GCS_RETRY_CONFIG_MAX_RETRIES": "0", "GCS_REQUEST_CONNECTION_TIMEOUT_SECS": "5",
    "GCS_METADATA_REQUEST_TIMEOUT_SECS": "1", "NO_GCE_CHECK": "true"}


def _main(cwd, *argv, **env):
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                         f"--config={ROOT}/configs/demo.py", *argv], cwd=cwd,
                        env={**os.environ, **OFFLINE, **env}, capture_output=True, text=True,
                        timeout=600, check=False)


def _errors(stderr: str) -> list[str]:
  """The program's own lines (TensorFlow's C++ logs may warn about credentials first)."""
  return [line for line in stderr.splitlines()
          if not line.startswith(("W0000 ", "WARNING: All log messages"))]


@pytest.mark.parametrize("where", ["workdir", "dataset", "generate"])
def test_an_unreachable_bucket_fails_at_start_in_one_line_and_creates_nothing_local(
    tmp_path, where):
  url = "gs://dcgan-jax-no-such-bucket/runs/demo"
  argv = {"workdir": [f"--workdir={url}"],
          "dataset": [f"--workdir={tmp_path}/w", f"--config.dataset={url}"],
          "generate": [f"--workdir={url}", "--mode=generate"]}[where]
  (tmp_path / "cwd").mkdir()
  r = _main(tmp_path / "cwd", *argv)
  assert r.returncode == 2, r.stderr
  (line,) = _errors(r.stderr)
  assert line.startswith(f"error: {where if where != 'generate' else 'checkpoint path'} "
                         f"'{url}' ") and "check the bucket's name, your credentials" in line
  assert os.listdir(tmp_path / "cwd") == []  # no local folder named gs:
  assert not (tmp_path / "w").exists()


def test_a_filesystem_it_cannot_serve_is_named(tmp_path):
  r = _main(tmp_path, "--workdir=foo://runs/demo")
  assert r.returncode == 2 and _errors(r.stderr) == [
      "error: workdir 'foo://runs/demo': foo:// is not a filesystem this program can use; "
      "pass a local path or gs://BUCKET/PATH."]
  assert os.listdir(tmp_path) == []


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """``gs://fake-bucket/...`` served from a local folder, for everything that uses ``fs.path``."""
  root = tmp_path / "bucket"
  root.mkdir()
  real = fs.path

  def path(p, what="path"):
    if str(p).startswith(BUCKET):
      return epath.Path(str(root) + str(p)[len(BUCKET):])
    return real(p, what)
  monkeypatch.setattr(fs, "path", path)
  monkeypatch.chdir(tmp_path)
  return root


def test_the_run_s_own_files_go_through_the_path_layer(fake_bucket, tmp_path, caplog):
  run = f"{BUCKET}/runs/demo"
  workdir.check(run)
  assert (fake_bucket / "runs" / "demo").is_dir()
  with workdir.lock(run) as lock:  # a bucket cannot lock: a note naming the run
    lock.announce()
    note = json.loads((fake_bucket / "runs" / "demo" / ".lock").read_text())
    assert note["pid"] == os.getpid()
    with workdir.lock(run):
      assert "has a lock note of another run" in caplog.text
    assert json.loads((fake_bucket / "runs" / "demo" / ".lock").read_text()) == note  # not its
  assert not (fake_bucket / "runs" / "demo" / ".lock").exists()  # its own, gone at the end
  sampling.save_png(f"{run}/samples/samples_0000001.png", np.zeros((4, 4, 3), np.uint8))
  assert Image.open(fake_bucket / "runs" / "demo" / "samples" / "samples_0000001.png").size == (
      4, 4)
  with pytest.raises(errors.CheckpointError, match=f"checkpoint path '{run}/nope' does not"):
    checkpoints.locate(f"{run}/nope")
  # A folder dataset: listed and probed through the same layer.
  faces = fake_bucket / "faces" / "a"
  faces.mkdir(parents=True)
  for i in range(3):
    Image.new("RGB", (20, 30), (i, 0, 0)).save(faces / f"{i}.png")
  (faces / "bad.jpg").write_text("<html>")
  files = input_pipeline.list_image_files(f"{BUCKET}/faces")
  assert files == [f"{BUCKET}/faces/a/{n}" for n in ("0.png", "1.png", "2.png", "bad.jpg")]
  assert [input_pipeline.probe_image(f) for f in files] == [
      None, None, None, "HTML/XML text, not an image"]
  assert sorted(os.listdir(tmp_path)) == ["bucket"]  # nothing named gs: beside it


def test_export_to_the_original_round_trips_bit_identically(tmp_path):
  from dcgan_jax.pytorch import original
  config = tiny_config(num_train_steps=2)
  state = train.train_and_evaluate(config, str(tmp_path))
  generate.run(config, str(tmp_path), "export_torch")
  g_vars, nz, ngf = original.load_netg(str(tmp_path / "netg.pth"))
  d_vars, ndf = original.load_netd(str(tmp_path / "netd.pth"))
  assert (nz, ngf, ndf) == (config.nz, 8, 8)
  for ours, theirs in ((state.g.variables, g_vars), (state.d.variables, d_vars)):
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs),
                    strict=True):
      assert a.dtype == b.dtype and np.array_equal(a, b)


TORCH = "/tmp/torch-ref/bin/python"
TORCH_REF = os.path.join(ROOT, "..", "shared", "bench", "torch_ref.py")
_TORCH_SAMPLES = textwrap.dedent("""
    import sys, numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    import torch_ref
    nz, ngf, ndf = map(int, sys.argv[3:6])
    netg = torch.nn.Module(); netg.main = torch_ref.make_generator(nz, ngf)
    netd = torch.nn.Module(); netd.main = torch_ref.make_discriminator(ndf)
    netg.load_state_dict(torch.load(sys.argv[2] + "/netg.pth"))
    netd.load_state_dict(torch.load(sys.argv[2] + "/netd.pth"))
    netg.eval(); netd.eval()
    z = torch.from_numpy(np.load(sys.argv[2] + "/z.npy")).reshape(-1, int(sys.argv[3]), 1, 1)
    with torch.no_grad():
      images = netg.main(z)
      scores = netd.main(images).reshape(-1)
    np.save(sys.argv[2] + "/torch_images.npy", images.permute(0, 2, 3, 1).numpy())
    np.save(sys.argv[2] + "/torch_scores.npy", scores.numpy())
""")


@pytest.mark.skipif(not (os.path.exists(TORCH) and os.path.exists(TORCH_REF)),
                    reason="the PyTorch reference environment (../shared/bench/README.md)")
def test_the_original_code_loads_the_export_and_draws_the_same_faces(tmp_path):
  config = tiny_config(num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  generate.run(config, str(tmp_path), "export_torch")
  m = generate.load_models(config, str(tmp_path))
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (6, config.nz)), np.float32)
  np.save(tmp_path / "z.npy", z)
  subprocess.run([TORCH, "-c", _TORCH_SAMPLES, os.path.dirname(TORCH_REF), str(tmp_path),
                  str(config.nz), "8", "8"], check=True, timeout=600)
  ours = np.asarray(sampling.sample(m.generator, m.g_variables, z))
  np.testing.assert_allclose(np.load(tmp_path / "torch_images.npy"), ours, atol=1e-5)
  scores = np.asarray(sampling.discriminate(m.discriminator, m.d_variables, ours))
  np.testing.assert_allclose(np.load(tmp_path / "torch_scores.npy"), scores, atol=1e-5)
