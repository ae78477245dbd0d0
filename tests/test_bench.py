"""The prepared accelerator run and the step profiler work end to end (small, on CPU)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_config


def _run(args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow  # every layer's formulations, steps and loops: ~2 CPU minutes
def test_accelerator_script_reports_every_measurement():
  out = _run(["bench/accelerator.py", "--batch", "8", "--steps", "2", "--warmup", "0",
              "--ngf", "8", "--ks", "1,2", "--loop-steps", "16", "--layer-reps", "1",
              "--dtypes", "float32", "--torch-ref", "/nonexistent.py"])
  layers = re.findall(r"^layer_(\S+)_(\S+)_float32_ms=([0-9.]+)", out, re.M)
  assert len(layers) >= 10 + 7 and all(float(t) > 0 for *_, t in layers), out
  assert {"D.conv1", "G.convt1"} <= {name for name, *_ in layers}
  for impl in ("auto", "cpu"):
    for k in (1, 2):
      m = re.search(rf"step_float32_{impl}_k{k}_imgs_per_s=([0-9.]+) .*of_bound=([0-9.]+)", out)
      assert m and float(m.group(1)) > 0, out
      assert float(m.group(2)) == pytest.approx(float(m.group(1)) / 390_000, rel=0.01)
  for k in (1, 2):
    m = re.search(rf"loop_float32_k{k}_imgs_per_s=([0-9.]+) loop_efficiency=([0-9.]+) "
                  r"compiles_after_warmup=(\d+)", out)
    assert m and float(m.group(1)) > 0 and int(m.group(3)) == 0, out
  assert "torch_imgs_per_s=skipped (/nonexistent.py not found)" in out


@pytest.mark.slow  # a training run and the isolated step: ~30 s
def test_train_loop_reports_loop_step_and_efficiency():
  out = _run(["bench/train_loop.py", "--config", "demo", "--ngf", "8", "--ndf", "8",
              "--batch", "8", "--steps", "12", "--log-every", "2", "--rss-at", "2,12",
              "--step-steps", "4", "--steps-per-call", "2"])
  loop = float(re.search(r"^loop_imgs_per_s=([0-9.]+)$", out, re.M).group(1))
  step = float(re.search(r"^step_imgs_per_s=([0-9.]+)", out, re.M).group(1))
  assert re.search(r"^loop_compiles_after_warmup=0 ", out, re.M), out
  assert re.search(r"^peak_rss_mb_at_step_12=[0-9]+$", out, re.M), out
  last = out.strip().splitlines()[-1]
  assert last == f"loop_efficiency={loop / step:.3f}" or \
      float(last.split("=")[1]) == pytest.approx(loop / step, abs=2e-3), out


@pytest.mark.slow
def test_profile_splits_the_step_into_kinds_of_op():
  out = _run(["bench/profile_step.py", "--batch", "8", "--steps", "1"])
  shares = dict(re.findall(r"^  (conv \(untraced\)|elementwise|transpose|reduce)\s+[0-9.]+ ms\s+"
                           r"([0-9.]+)%", out, re.M))
  assert "conv (untraced)" in shares and "elementwise" in shares, out
  assert 50 < sum(map(float, shares.values())) <= 100.5


def test_quality_refuses_a_dataset_folder_that_is_not_there(tmp_path):
  # Otherwise the study trains and scores the synthetic faces, and says nothing.
  missing = tmp_path / "faces"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "bench/quality.py", "--steps", "2", "--dataset",
                        str(missing), "--workdir", str(tmp_path / "q")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 1, out.stderr[-2000:]
  assert f"--dataset {missing}: no such folder" in out.stderr
  assert not (tmp_path / "q").exists()


def test_bench_loops_stand_in_synthetic_faces_for_a_missing_folder_only(tmp_path):
  from bench import train_loop  # noqa: PLC0415
  missing = str(tmp_path / "faces")
  assert train_loop.loop_config("demo", 8, dataset=missing).dataset == "synthetic"
  assert train_loop.loop_config("demo", 8, dataset=str(tmp_path)).dataset == str(tmp_path)
  assert train_loop.loop_config("demo", 8, dataset="tfds:faces").dataset == "tfds:faces"
  with pytest.raises(SystemExit, match="no such folder"):
    train_loop.loop_config("demo", 8, synthetic_if_missing=False, dataset=missing)


def test_the_isolated_step_runs_the_turns_the_loop_meets(monkeypatch):
  import jax  # noqa: PLC0415

  from bench import common  # noqa: PLC0415
  from dcgan_jax import cpu_flags  # noqa: PLC0415

  if jax.default_backend() != "cpu":
    pytest.skip("one program per pattern of turns is XLA:CPU's path")
  # In process, main.py's XLA flags would reach every later test's backend.
  monkeypatch.setattr(cpu_flags, "use_fast_cpu_flags", lambda env=None: "")
  # R1 at D's even updates: a step timed at every count meets both programs,
  # one timed at count 0 over and over only the R1 step.
  r = common.time_step(tiny_config(r1_gamma=1.0, r1_every=2), steps=2, warmup=0)
  assert r["programs"] == 2 and r["ms_per_step"] > 0, r
