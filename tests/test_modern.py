"""The recipe switches beyond the original: hinge, spectral norm, DiffAugment, R1, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, tiny_config, train_call

from dcgan_jax import augment, checkpoints, config_lib, losses, models, train
from dcgan_jax.data import input_pipeline
from dcgan_jax.state import create_train_state, ema_beta


def test_the_losses_by_hand():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.5])
  # relu(1 - real) = 0, 0.5, 2; relu(1 + fake) = 0, 1, 2.5
  assert float(losses.d_loss("hinge", real, fake)) == pytest.approx(2.5 / 3 + 3.5 / 3)
  assert float(losses.g_loss("hinge", fake)) == pytest.approx(0.5 / 3)
  p_real, p_fake = 1 / (1 + np.exp(-np.asarray(real))), 1 / (1 + np.exp(-np.asarray(fake)))
  assert float(losses.d_loss("bce", real, fake)) == pytest.approx(
      -np.log(p_real).mean() - np.log(1 - p_fake).mean(), rel=1e-5)
  assert float(losses.g_loss("bce", fake)) == pytest.approx(-np.log(p_fake).mean(), rel=1e-5)
  assert losses.d_outputs("hinge", real, fake) == {"logit_real": pytest.approx(0.5),
                                                   "logit_fake": pytest.approx(-1 / 6)}
  assert set(losses.g_outputs("bce", fake)) == {"d_fake_g"}


def _key(i=0):
  return jax.random.PRNGKey(i)


def test_diffaugment_transforms():
  x = jax.random.uniform(_key(1), (6, 96, 96, 3), minval=-1, maxval=1)
  for policy in ("color", "translation", "cutout", "color,translation,cutout"):
    names = augment.parse(policy)
    y = augment.apply(_key(2), x, names)
    assert y.shape == x.shape and bool(jnp.isfinite(y).all())
    np.testing.assert_array_equal(y, augment.apply(_key(2), x, names))  # a function of the key
    assert float(jnp.abs(y - x).max()) > 0.1
    assert float(jnp.abs(y - augment.apply(_key(3), x, names)).max()) > 0.1
    # Differentiable: G's gradient flows through what D sees.
    g = jax.grad(lambda x, names=names: jnp.sum(augment.apply(_key(2), x, names) ** 2))(x)
    assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0
  # Translation moves a single bright pixel by at most 12 pixels, keeping it whole or gone.
  dot = jnp.zeros((4, 96, 96, 1)).at[:, 48, 48, 0].set(1.0)
  moved = augment.apply(_key(4), dot, ("translation",))
  for img in np.asarray(moved[..., 0]):
    ys, xs = np.nonzero(img)
    assert len(ys) == 1 and abs(ys[0] - 48) <= 12 and abs(xs[0] - 48) <= 12
  # Cutout zeroes one 48x48 square (cut at the border when it hangs over it).
  ones = augment.apply(_key(5), jnp.ones((8, 96, 96, 1)), ("cutout",))[..., 0]
  for img in np.asarray(ones):
    rows, cols = np.nonzero(img == 0)
    assert rows.max() - rows.min() < 48 and cols.max() - cols.min() < 48
    assert (img == 0).sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
  assert np.mean([(img == 0).sum() for img in np.asarray(ones)]) > 0.3 * 48 * 48
  with pytest.raises(ValueError, match=r"config.diffaugment='color,flip': unknown \['flip'\]"):
    augment.parse("color,flip")


def test_diffaugment_draws_do_not_depend_on_how_many_replicas_share_the_batch():
  x = jax.random.uniform(_key(1), (8, 96, 96, 3), minval=-1, maxval=1)
  policy = augment.parse("color,translation,cutout")
  whole = augment.apply(_key(6), x, policy)
  halves = [augment.apply(_key(6), x[i * 4:(i + 1) * 4], policy, index=i, count=2)
            for i in range(2)]
  np.testing.assert_allclose(np.concatenate(halves), whole, atol=1e-6)


def test_spectral_norm_divides_d_kernels_by_their_largest_singular_value():
  d = models.Discriminator(ndf=8, spectral_norm=True, batch_norm=False)
  x = jax.random.normal(_key(1), (2, 96, 96, 3))
  v = d.init(_key(0), x)
  assert set(v["params"]) == {f"conv{i}" for i in range(5)}  # no BatchNorm, names kept
  stats = v["batch_stats"]
  for _ in range(30):  # one power-iteration step per training pass
    _, upd = d.apply({**v, "batch_stats": stats}, x, mutable=["batch_stats"])
    stats = upd["batch_stats"]
  for i in range(5):
    kernel = np.asarray(v["params"][f"conv{i}"]["kernel"])
    true = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    sigma = float(stats[f"conv{i}_sn"][f"conv{i}/kernel/sigma"])
    assert sigma == pytest.approx(true, rel=1e-3), i
  # Inference uses the stored estimate and changes nothing.
  y1 = d.apply({**v, "batch_stats": stats}, x, train=False)
  y2, upd = d.apply({**v, "batch_stats": stats}, x, train=False, mutable=["batch_stats"])
  np.testing.assert_array_equal(y1, y2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd["batch_stats"], stats)


def _one_call(config, k: int = 1):
  state = create_train_state(config, _key(0))
  runner, call, empty = train_call(config)
  batches = input_pipeline.create_input(config).batches
  batch = runner.put_batch(np.stack([next(batches) for _ in range(k)]))
  new, summary = call(runner.put_state(state), empty, batch, None, 0)
  from dcgan_jax import summaries
  return state, runner.get(new), summaries.host_scalars(runner.get(summary))


@pytest.mark.parametrize("kind,dtype,per_call", [
    ("pmap", "float32", 1),
    pytest.param("shard_map", "bfloat16", 2, marks=pytest.mark.slow)])
def test_the_modern_switches_train_with_every_wrapper_dtype_and_call_length(
    kind, dtype, per_call):
  config = tiny_config(loss="hinge", d_spectral_norm=True, d_batch_norm=False,
                       diffaugment="color,translation,cutout", lr_d=4e-4, ema_decay=0.99,
                       g_upsample="resize", parallel=kind, dtype=dtype, steps_per_call=per_call,
                       log_every=2, plot_every=2, num_train_steps=4, save_every_steps=2)
  config_lib.validate(config, device_count=1)
  old, new, m = _one_call(config, per_call)
  assert set(m) == {"loss_d", "logit_real", "logit_fake", "loss_g", "logit_fake_g"}
  assert all(np.isfinite(v) for v in m.values())
  # At init D's scores are near 0: each hinge term is near 1.
  assert 1.5 < m["loss_d"] < 2.5 and abs(m["loss_g"]) < 0.5
  for name in ("convt0", "conv1", "conv4"):  # resize G's dense layer and its convolutions
    assert not np.array_equal(old.g.params[name]["kernel"], new.g.params[name]["kernel"])
  assert not np.array_equal(old.d.params["conv0"]["kernel"], new.d.params["conv0"]["kernel"])
  u_old = old.d.batch_stats["conv1_sn"]["conv1/kernel/u"]
  assert not np.array_equal(u_old, new.d.batch_stats["conv1_sn"]["conv1/kernel/u"])
  assert int(new.step) == per_call


def test_diffaugment_changes_what_d_learns_from():
  base = tiny_config()
  _, plain, _ = _one_call(base)
  _, augmented, _ = _one_call(tiny_config(diffaugment="translation"))
  assert not np.array_equal(plain.d.params["conv0"]["kernel"],
                            augmented.d.params["conv0"]["kernel"])


def test_spectral_norm_is_a_model_key_restored_from_the_checkpoint(tmp_path):
  from dcgan_jax.samples import generate
  config = tiny_config(d_spectral_norm=True, d_batch_norm=False, loss="hinge",
                       num_train_steps=2)
  trained = train.train_and_evaluate(config, str(tmp_path / "sn"))
  # generate and eval take the switch from the checkpoint, not the command line.
  state, cfg, _ = checkpoints.restore_trained(tiny_config(), str(tmp_path / "sn"), "")
  assert cfg.d_spectral_norm and not cfg.d_batch_norm
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.d.batch_stats,
                         trained.d.batch_stats)
  assert generate.run(tiny_config(gen_search_num=8, gen_num=4), str(tmp_path / "sn"),
                      "generate").endswith("result.png")
  with pytest.raises(ValueError, match=r"d_spectral_norm=True \(config: False\)"):
    train.train_and_evaluate(tiny_config(num_train_steps=3, init_from=str(tmp_path / "sn")),
                             str(tmp_path / "other"))


def test_d_without_any_normalisation_trains():
  config = tiny_config(d_batch_norm=False, loss="hinge")
  old, new, m = _one_call(config)
  assert old.d.batch_stats == {} and new.d.batch_stats == {}
  assert all(np.isfinite(v) for v in m.values()) and int(new.d.step) == 1


def test_the_modern_config_is_the_original_with_the_study_s_switches():
  original, modern = load_config("anime"), load_config("anime_modern")
  config_lib.validate(modern, device_count=1)
  changed = {k for k in original if original[k] != modern[k]}
  assert changed == {"loss", "d_spectral_norm", "beta1", "beta2", "lr_d", "lr_g",
                     "ema_decay", "standing_stats"}, changed
  assert (modern.loss, modern.d_spectral_norm, modern.d_batch_norm) == ("hinge", True, True)
  assert (modern.beta1, modern.beta2, modern.lr_d, modern.lr_g) == (0.0, 0.9, 4e-4, 1e-4)
  assert (modern.ema_decay, modern.standing_stats) == (0.999, 4096)
  assert (modern.batch_size, modern.nz, modern.ngf, modern.ndf) == (256, 100, 64, 64)


def test_the_cpu_config_is_the_original_at_quarter_width_with_r1_and_an_ema():
  original, cpu = load_config("anime"), load_config("anime_cpu")
  config_lib.validate(cpu, device_count=1)
  changed = {k for k in original if original[k] != cpu[k]}
  assert changed == {"ngf", "ndf", "batch_size", "num_train_steps", "log_every",
                     "plot_every", "save_every_steps", "fid", "r1_gamma", "ema_kimg"}, changed
  assert (cpu.ngf, cpu.ndf, cpu.batch_size, cpu.num_train_steps) == (16, 16, 64, 12500)
  assert (cpu.image_size, cpu.nz, cpu.lr_g, cpu.lr_d) == (96, 100, 2e-4, 2e-4)
  assert (cpu.r1_gamma, cpu.r1_every, cpu.ema_kimg, cpu.ema_decay) == (0.03, 16, 10.0, 0.0)
  assert cpu.diffaugment == "" and cpu.loss == "bce"
  assert cpu.num_train_steps % cpu.save_every_steps == 0 and cpu.fid.eval_every == 0


def test_r1_is_the_mean_squared_input_gradient_of_d_at_the_reals():
  d = models.Discriminator(8, batch_norm=False)  # D(x_i) depends on x_i alone
  x = jax.random.uniform(_key(1), (4, 96, 96, 3), minval=-1, maxval=1)
  variables = d.init(_key(2), x)
  got = train.r1_penalty(lambda x: d.apply(variables, x), x)
  # By hand: each image's gradient of its own logit, squared and summed, averaged.
  per_image = jax.vmap(jax.grad(lambda xi: d.apply(variables, xi[None])[0]))(x)
  want = float(np.mean([np.sum(np.asarray(g, np.float64) ** 2) for g in per_image]))
  assert want > 0 and float(got) == pytest.approx(want, rel=1e-5)


def test_r1_enters_d_s_step_every_r1_every_d_steps_scaled_by_it():
  plain = tiny_config(g_every=1000)
  _, ref, _ = _one_call(plain)
  with_r1 = tiny_config(g_every=1000, r1_gamma=10.0, r1_every=2)
  _, lazy, _ = _one_call(with_r1)  # D's step 0: the penalty is added
  diff = np.abs(np.asarray(lazy.d.params["conv0"]["kernel"] - ref.d.params["conv0"]["kernel"]))
  assert diff.max() > 1e-6
  # Step 1 (D's update count 1): no penalty, the plain step.
  state = create_train_state(plain, _key(0))
  at_1 = state.replace(step=jnp.int32(1), d=state.d.replace(step=jnp.int32(1)))
  outs = []
  for config in (plain, with_r1):
    runner, call, empty = train_call(config)
    batch = runner.put_batch(next(input_pipeline.create_input(config).batches)[None])
    outs.append(runner.get(call(runner.put_state(at_1), empty, batch, None, 1)[0]))
  for a, b in zip(jax.tree_util.tree_leaves(outs[0].d.params),
                  jax.tree_util.tree_leaves(outs[1].d.params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind,dtype,per_call", [
    ("shard_map", "float32", 2), pytest.param("pmap", "bfloat16", 1, marks=pytest.mark.slow)])
def test_r1_and_the_image_horizon_ema_train_with_every_wrapper_dtype_and_call_length(
    kind, dtype, per_call):
  config = tiny_config(r1_gamma=0.03, r1_every=1, ema_kimg=0.5, parallel=kind, dtype=dtype,
                       steps_per_call=per_call, log_every=2, plot_every=2, num_train_steps=4,
                       save_every_steps=2)
  config_lib.validate(config, device_count=1)
  old, new, m = _one_call(config, per_call)
  assert all(np.isfinite(v) for v in m.values()) and int(new.step) == per_call
  assert not np.array_equal(old.d.params["conv0"]["kernel"], new.d.params["conv0"]["kernel"])
  # At step 0 the horizon is 0 images: the EMA is G itself.
  if per_call == 1:
    np.testing.assert_array_equal(new.ema["params"]["convt0"]["kernel"],
                                  new.g.params["convt0"]["kernel"])


def test_the_image_horizon_ema_ramps_up_with_the_images_seen():
  config = tiny_config(ema_kimg=10.0, ema_rampup=0.05, batch_size=64)
  beta = lambda n: float(ema_beta(config, jnp.int32(n)))
  assert beta(0) == 0.0  # nothing seen: the average is G
  # 1,000 steps of 64: 64,000 images, a horizon of min(10,000, 3,200) images.
  assert beta(1000) == pytest.approx(0.5 ** (64 / 3200), rel=1e-6)
  assert beta(10**6) == pytest.approx(0.5 ** (64 / 10000), rel=1e-6)  # the half-life
  config.ema_rampup = 0.0
  assert beta(0) == pytest.approx(0.5 ** (64 / 10000), rel=1e-6)
  tf_ramp = tiny_config(ema_decay=0.999)
  assert float(ema_beta(tf_ramp, jnp.int32(0))) == pytest.approx(0.1)
  with pytest.raises(config_lib.ConfigError, match="ema_decay .*not both"):
    config_lib.validate(tiny_config(ema_decay=0.99, ema_kimg=1.0), device_count=1)


def test_r1_s_parameter_gradient_is_the_same_through_every_convolution_form():
  x = jax.random.uniform(_key(1), (2, 96, 96, 3), minval=-1, maxval=1)
  grads = []
  for impl in ("cpu", "xla"):
    d = models.Discriminator(8, conv_impl=impl)
    variables = d.init(_key(2), x)

    def penalty(params, d=d, variables=variables):
      run = lambda x: d.apply({**variables, "params": params}, x, mutable=["batch_stats"])[0]
      return train.r1_penalty(run, x)
    grads.append(jax.grad(penalty)(variables["params"]))
  for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1]),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)
