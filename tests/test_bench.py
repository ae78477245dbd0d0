"""The prepared accelerator run and the step profiler work end to end (small, on CPU)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_accelerator_script_reports_every_measurement():
  out = _run(["bench/accelerator.py", "--batch", "8", "--steps", "2", "--warmup", "0",
              "--ngf", "8", "--input-images", "16", "--torch-ref", "/nonexistent.py"])
  for dtype in ("float32", "bfloat16"):
    m = re.search(rf"jax_{dtype}_imgs_per_s=([0-9.]+) .*of_bound=([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, out
    assert float(m.group(2)) == pytest.approx(float(m.group(1)) / 390_000, rel=0.01)
  assert float(re.search(r"device_input_imgs_per_s=([0-9.]+)", out).group(1)) > 0
  assert "torch_imgs_per_s=skipped (/nonexistent.py not found)" in out


@pytest.mark.slow
def test_profile_splits_the_step_into_kinds_of_op():
  out = _run(["bench/profile_step.py", "--batch", "8", "--steps", "1"])
  shares = dict(re.findall(r"^  (conv \(untraced\)|elementwise|transpose|reduce)\s+[0-9.]+ ms\s+"
                           r"([0-9.]+)%", out, re.M))
  assert "conv (untraced)" in shares and "elementwise" in shares, out
  assert 50 < sum(map(float, shares.values())) <= 100.5
