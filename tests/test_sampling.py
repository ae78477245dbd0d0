import functools
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config
from PIL import Image

from dcgan_jax import errors, train
from dcgan_jax.pytorch import archive, original
from dcgan_jax.samples import generate, sampling
from dcgan_jax.state import create_train_state, make_models


@functools.cache
def _models():
  config = tiny_config()
  state = create_train_state(config, jax.random.PRNGKey(0))
  g, d = make_models(config)
  # At init G's faces are ~1e-5 (and D's scores nearly tied): scale its last
  # layer up so that samples, and their scores, differ clearly.
  g_vars = jax.tree_util.tree_map(lambda x: x, state.g.variables)
  g_vars["params"]["convt4"]["kernel"] = g_vars["params"]["convt4"]["kernel"] * 3e4
  return config, g, g_vars, d, state.d.variables


def test_generate_keeps_the_best_scored_samples_best_first():
  config, g, g_vars, d, d_vars = _models()
  rng = jax.random.PRNGKey(3)
  images, scores = sampling.generate(g, g_vars, d, d_vars, rng, nz=config.nz,
                                     search_num=20, num=5, mean=0.5, std=2.0, chunk=8)
  assert images.shape == (5, 96, 96, 3) and scores.shape == (5,)
  # Brute force over the same 20 noises (in the same chunks: XLA's numbers may
  # depend on the batch size in the last bits).
  z = 0.5 + 2.0 * jax.random.normal(rng, (20, config.nz))
  all_images = np.concatenate([sampling.sample(g, g_vars, z[i:i + 8]) for i in (0, 8, 16)])
  all_scores = np.concatenate([sampling.discriminate(d, d_vars, all_images[i:i + 8])
                               for i in (0, 8, 16)])
  assert np.ptp(all_images) > 1 and len(set(all_scores.tolist())) == 20
  best = np.argsort(-all_scores)[:5]
  np.testing.assert_array_equal(scores, all_scores[best])
  np.testing.assert_array_equal(images, all_images[best])
  assert np.all(np.diff(scores) <= 0)
  again, _ = sampling.generate(g, g_vars, d, d_vars, rng, nz=config.nz, search_num=20, num=5,
                               mean=0.5, std=2.0, chunk=8)
  np.testing.assert_array_equal(images, again)  # same seed, same faces
  other, _ = sampling.generate(g, g_vars, d, d_vars, jax.random.PRNGKey(4), nz=config.nz,
                               search_num=20, num=5, mean=0.5, std=2.0, chunk=8)
  assert not np.array_equal(images, other)
  with pytest.raises(ValueError, match="gen_num=30"):
    sampling.generate(g, g_vars, d, d_vars, rng, nz=config.nz, search_num=20, num=30)


def test_slerp_stays_on_the_sphere_and_hits_the_ends():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 3, 16))
  a /= np.linalg.norm(a, axis=-1, keepdims=True)
  b /= np.linalg.norm(b, axis=-1, keepdims=True)
  t = np.linspace(0, 1, 7)
  path = sampling.slerp(a, b, t)
  assert path.shape == (3, 7, 16)
  np.testing.assert_allclose(path[:, 0], a, atol=1e-6)
  np.testing.assert_allclose(path[:, -1], b, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 1.0, atol=1e-5)
  # Equal angles between successive points: a uniform walk on the circle.
  cos = np.sum(path[:, 1:] * path[:, :-1], -1)
  np.testing.assert_allclose(cos, cos[:, :1].repeat(6, 1), atol=1e-5)
  # Parallel end points: the straight line.
  np.testing.assert_allclose(sampling.slerp(a[0], 2 * a[0], t)[3], 1.5 * a[0], atol=1e-5)


def test_interpolation_rows_pair_linear_and_spherical_walks():
  z = sampling.interpolation_latents(jax.random.PRNGKey(0), nz=32, rows=3, steps=5)
  assert z.shape == (15, 32)
  rows = z.reshape(3, 5, 32)
  np.testing.assert_allclose(rows[0, [0, -1]], rows[1, [0, -1]], atol=1e-5)  # same ends
  np.testing.assert_allclose(rows[0, 2], (rows[0, 0] + rows[0, -1]) / 2, atol=1e-5)
  # The linear midpoint is shorter than the ends; the spherical one is not.
  ends = np.linalg.norm(rows[1, [0, -1]], axis=-1).min()
  assert np.linalg.norm(rows[0, 2]) < ends <= np.linalg.norm(rows[1, 2]) + 1e-4
  assert not np.allclose(rows[2, 0], rows[0, 0])  # a new pair of end points


def _gen_config(**kw):
  return tiny_config(num_train_steps=2, gen_search_num=12, gen_num=4, interp_rows=3,
                     interp_steps=5, **kw)


@pytest.mark.slow
def test_generate_and_interpolate_from_a_checkpoint_and_from_torch_files(tmp_path):
  config = _gen_config()
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  path = generate.run(config, str(tmp_path / "run"), "generate")
  assert path == str(tmp_path / "run" / "result.png")
  grid = np.asarray(Image.open(path))
  assert grid.shape == (2 + 2 * 98, 2 + 2 * 98, 3)  # 4 faces, 2 x 2
  interp = np.asarray(Image.open(generate.run(config, str(tmp_path / "run"), "interpolate")))
  assert interp.shape == (2 + 3 * 98, 2 + 5 * 98, 3)

  # The same nets as the original's state dicts: the same faces, in the same order.
  for net, layers in (("g", original.G_LAYERS), ("d", original.D_LAYERS)):
    variables = getattr(state, net).variables
    archive.save_state_dict(str(tmp_path / f"net{net}.pth"),
                                  original.to_torch_state_dict(variables, layers))
  torch_config = _gen_config(torch_netg=str(tmp_path / "netg.pth"),
                             torch_netd=str(tmp_path / "netd.pth"))
  torch_grid = np.asarray(Image.open(generate.run(torch_config, str(tmp_path / "t"), "generate")))
  np.testing.assert_array_equal(torch_grid, grid)

  with pytest.raises(errors.CheckpointError, match="Train first"):
    generate.run(config, str(tmp_path / "empty"), "generate")
  with pytest.raises(errors.ConfigError, match="both"):
    generate.run(_gen_config(torch_netg="x.pth"), str(tmp_path / "t"), "generate")


@pytest.mark.slow
def test_main_generate_mode(tmp_path):
  train.train_and_evaluate(_gen_config(), str(tmp_path))
  cmd = [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={tmp_path}",
         "--mode=generate", "--config.gen_search_num=12", "--config.gen_num=9",
         "--config.gen_img=best.png"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Kept 9 of 12 samples" in r.stderr
  # The model sizes come from the checkpoint (8-wide nets), not configs/demo.py (32).
  assert np.asarray(Image.open(tmp_path / "best.png")).shape == (2 + 3 * 98, 2 + 3 * 98, 3)


def test_standing_stats_are_the_batch_statistics_the_generator_normalises_with():
  config, g, g_vars, _, _ = _models()
  key = jax.random.PRNGKey(7)
  standing = sampling.standing_stats(g, g_vars, key, num=24, batch=8)
  assert jax.tree_util.tree_structure(standing) == jax.tree_util.tree_structure(g_vars)
  np.testing.assert_array_equal(standing["params"]["convt4"]["kernel"],
                                g_vars["params"]["convt4"]["kernel"])
  # Flax's own running averages, started from zero, hold 0.1 x the batch
  # statistics (momentum 0.9) after one training-mode pass: the mean over the
  # three batches is the standing statistics.
  zero = {"params": g_vars["params"],
          "batch_stats": jax.tree_util.tree_map(np.zeros_like, g_vars["batch_stats"])}
  per_batch = [g.apply(zero, jax.random.normal(jax.random.fold_in(key, i), (8, config.nz)),
                       train=True, mutable=["batch_stats"])[1]["batch_stats"] for i in range(3)]
  want = jax.tree_util.tree_map(lambda *b: 10 * sum(b) / 3, *per_batch)
  assert set(want) == {"bn0", "bn1", "bn2", "bn3"}
  for name, stats in want.items():
    for k in ("mean", "var"):
      np.testing.assert_allclose(standing["batch_stats"][name][k], stats[k],
                                 rtol=1e-4, atol=1e-6)
  # They are not the running averages training left (here, init's 0 and 1).
  assert np.abs(standing["batch_stats"]["bn3"]["var"] - 1).max() > 0.1
  # Inference with the standing statistics of one batch of noise is training
  # mode on that batch (to float rounding, which the 3e4-scaled last layer
  # magnifies), unlike inference with the running averages.
  z = jax.random.normal(jax.random.fold_in(key, 0), (8, config.nz))
  one = sampling.standing_stats(g, g_vars, key, num=8, batch=8)
  trained = g.apply(g_vars, z, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(sampling.sample(g, one, z), trained, atol=1e-2)
  assert np.abs(sampling.sample(g, g_vars, z) - trained).max() > 0.5


@pytest.mark.slow
def test_standing_stats_switch_reaches_generate(tmp_path):
  config = _gen_config()
  train.train_and_evaluate(config, str(tmp_path / "run"))
  plain = np.asarray(Image.open(generate.run(config, str(tmp_path / "run"), "generate")))
  config.standing_stats = 16
  standing = np.asarray(Image.open(generate.run(config, str(tmp_path / "run"), "generate")))
  assert plain.shape == standing.shape and np.abs(plain.astype(int) - standing).max() > 8
  _, g, g_vars, _, _ = _models()
  assert sampling.prepare(g, g_vars, _gen_config()) is g_vars  # 0: as they are
