"""The device-resident input path gives the in-memory path's batches."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config

from dcgan_jax import config_lib, parallel, train

# Batch k from the devices vs batch k from the host path, split over the
# devices by the runner: equal across an epoch boundary and from a resume
# point (50 images, batch 8: 6 steps per epoch; steps 5..18).
_COMPARE = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from dcgan_jax import parallel
    from dcgan_jax.data import device_input, input_pipeline
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    kind = sys.argv[1]
    runner = parallel.make_runner(kind)
    # What each device sees, gathered from all of them (the outputs are replicated).
    every_device = lambda x: jax.lax.all_gather(x, parallel.AXIS)
    from_rows = runner.compile(
        lambda rows, im: every_device(device_input.gather(im, rows[0])), ("batch", "copies"),
        donate_argnums=())
    from_host = runner.compile(lambda b: every_device(b[0]), ("batch",), donate_argnums=())
    on_device = runner.put_copies(images)
    rows = device_input.index_rows(50, 8, 3, start_step=5)
    host = input_pipeline.array_batches(images, 8, 3, start_step=5)
    for k in range(5, 19):
      r, h = next(rows), next(host)
      d = runner.get(from_rows(runner.put_batch(r[None]), on_device))
      want = runner.get(from_host(runner.put_batch(h[None])))
      assert d.shape == want.shape, (d.shape, want.shape)
      np.testing.assert_allclose(d, want, rtol=0, atol=1e-6)
      np.testing.assert_array_equal(input_pipeline.to_float(images[r]), h)
      np.testing.assert_array_equal(r, np.sort(
          input_pipeline.epoch_order(50, 8, 3, k // 6).reshape(6, 8)[k % 6]))
    print("ok", kind, d.shape)
""")


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_device_batches_equal_the_host_batches(kind, devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, "-c", _COMPARE, kind], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"ok {kind} {(devices, 8 // devices, 8, 8, 3)}" in out.stdout


def test_training_on_device_input_matches_the_host_path(tmp_path):
  finals = []
  for on_device in (False, True):
    config = tiny_config(input_on_device=on_device)
    finals.append(train.train_and_evaluate(config, str(tmp_path / str(on_device))))
  host, dev = (jax.tree_util.tree_leaves((s.g.params, s.d.params)) for s in finals)
  assert int(finals[1].step) == 3
  for a, b in zip(host, dev, strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_streamed_input_cannot_live_on_the_device(tmp_path):
  config = tiny_config(input_on_device=True, cache=False, dataset=str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="config.input_on_device=True"):
    config_lib.validate(config)


def test_an_unknown_wrapper_is_named():
  with pytest.raises(ValueError, match="config.parallel='tpu'"):
    parallel.make_runner("tpu")
