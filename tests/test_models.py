import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import models


def test_parameter_counts_match_pytorch_original():
  g = models.Generator().init(jax.random.key(0), jnp.zeros((1, 100)))
  d = models.Discriminator().init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)))
  assert models.count_params(g["params"]) == 3_578_432
  assert models.count_params(d["params"]) == 2_767_296
  # BatchNorm running stats are not parameters (PyTorch buffers).
  assert models.count_params(g["batch_stats"]) == 2 * (512 + 256 + 128 + 64)


def _layer_shapes(module, variables, x):
  _, state = module.apply(variables, x, capture_intermediates=True,
                          mutable=["intermediates", "batch_stats"])
  inter = state["intermediates"]
  names = sorted(k for k in inter if k.startswith("conv"))
  return [inter[k]["__call__"][0].shape for k in names]


def test_layer_shapes():
  g, d = models.Generator(), models.Discriminator()
  z = jnp.zeros((2, 100))
  gv = g.init(jax.random.key(0), z)
  assert _layer_shapes(g, gv, z) == [
      (2, 4, 4, 512), (2, 8, 8, 256), (2, 16, 16, 128), (2, 32, 32, 64), (2, 96, 96, 3)]
  x = jnp.zeros((2, 96, 96, 3))
  dv = d.init(jax.random.key(0), x)
  assert _layer_shapes(d, dv, x) == [
      (2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256), (2, 4, 4, 512), (2, 1, 1, 1)]
  assert d.apply(dv, x, train=False).shape == (2,)
  out = g.apply(gv, z, train=False)
  assert out.shape == (2, 96, 96, 3) and float(jnp.abs(out).max()) <= 1.0


def test_resize_generator_keeps_the_layer_sizes_with_3x3_convolutions():
  g = models.Generator(upsample="resize")
  z = jnp.zeros((2, 100))
  gv = g.init(jax.random.key(0), z)
  kernels = {k: v["kernel"].shape for k, v in gv["params"].items() if "kernel" in v}
  assert kernels == {"convt0": (4, 4, 512, 100), "conv1": (3, 3, 512, 256),
                     "conv2": (3, 3, 256, 128), "conv3": (3, 3, 128, 64), "conv4": (3, 3, 64, 3)}
  assert _layer_shapes(g, gv, z) == [  # conv1..conv4, then convt0
      (2, 8, 8, 256), (2, 16, 16, 128), (2, 32, 32, 64), (2, 96, 96, 3), (2, 4, 4, 512)]
  # 4*4*512*100 + 9*(512*256 + 256*128 + 128*64 + 64*3) + BatchNorm's 2*(512+256+128+64)
  assert models.count_params(gv["params"]) == 2_371_136


def _from_a_flat_4px_map(upsample):
  """The middle of G's image (eval mode) when its 4 px map is the same at every pixel."""
  g = models.Generator(ngf=8, upsample=upsample)
  v = g.init(jax.random.key(0), jnp.zeros((1, 100)))
  k = v["params"]["convt0"]["kernel"]
  params = {**v["params"], "convt0": {"kernel": jnp.broadcast_to(k[:1, :1], k.shape)}}
  z = jax.random.normal(jax.random.key(1), (1, 100))
  out = np.asarray(g.apply({**v, "params": params}, z, train=False))[0]
  return out[30:66, 30:66]  # zero padding reaches 22 px in from the edge through resize G


def test_resize_upsampling_leaves_no_checkerboard_where_strided_kernels_do():
  flat, grid = _from_a_flat_4px_map("resize"), _from_a_flat_4px_map("transpose")
  assert np.abs(flat).max() > 1e-3             # not a dead net
  assert flat.std(axis=(0, 1)).max() < 1e-6    # a flat map stays flat
  assert grid.std(axis=(0, 1)).max() > 1e-3    # the ConvTransposes stamp a pattern on it


def test_init_distribution():
  # 'pytorch' (default, the original's): U(+-1/sqrt(fan_in)) with torch's fan_in.
  g = models.Generator().init(jax.random.key(0), jnp.zeros((1, 100)))["params"]
  k = np.asarray(g["convt1"]["kernel"])          # torch weight (512, 256, 4, 4)
  bound = 1 / np.sqrt(256 * 16)
  assert k.max() <= bound and k.min() >= -bound and k.max() > 0.99 * bound
  assert abs(k.std() - bound / np.sqrt(3)) < 1e-4
  np.testing.assert_array_equal(g["bn1"]["scale"], 1.0)
  d = models.Discriminator().init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)))["params"]
  assert abs(np.asarray(d["conv0"]["kernel"]).max() - 1 / np.sqrt(3 * 25)) < 2e-3
  # 'dcgan': N(0, 0.02) kernels, N(1, 0.02) BatchNorm scales.
  g = models.Generator(init_scheme="dcgan").init(jax.random.key(0), jnp.zeros((1, 100)))["params"]
  k = np.asarray(g["convt1"]["kernel"])
  assert abs(k.std() - 0.02) < 1e-3 and abs(k.mean()) < 1e-3
  s = np.asarray(g["bn1"]["scale"])
  assert abs(s.mean() - 1.0) < 5e-3 and 0.01 < s.std() < 0.03
  assert np.all(np.asarray(g["bn1"]["bias"]) == 0)


@pytest.mark.parametrize("k,s,p,hw", [(4, 1, 0, 1), (4, 2, 1, 8), (5, 3, 1, 7)])
def test_conv_transpose_matches_flax_and_its_gradients(k, s, p, hw):
  x = jax.random.normal(jax.random.key(1), (2, hw, hw, 6))
  ours = models.ConvTranspose(5, k, s, p)
  ref = nn.ConvTranspose(5, (k, k), (s, s), padding=[(k - 1 - p, k - 1 - p)] * 2,
                         use_bias=False, transpose_kernel=True)
  v = ours.init(jax.random.key(2), x)
  y, y_ref = ours.apply(v, x), ref.apply(v, x)
  assert y.shape == (2, (hw - 1) * s - 2 * p + k, (hw - 1) * s - 2 * p + k, 5)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), y.shape)
  loss = lambda m: lambda v, x: jnp.sum(m.apply(v, x) * w)
  g = jax.grad(loss(ours), argnums=(0, 1))(v, x)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
  np.testing.assert_allclose(g[0]["params"]["kernel"], g_ref[0]["params"]["kernel"],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g[1], g_ref[1], rtol=1e-4, atol=1e-4)


def test_discriminator_bce_equals_sigmoid_bceloss():
  from dcgan_jax.losses import bce
  logits = np.array([-5.0, -2.0, 0.0, 3.0, 6.0])
  p = 1 / (1 + np.exp(-logits))
  np.testing.assert_allclose(bce(jnp.asarray(logits), 1.0), -np.mean(np.log(p)), rtol=1e-5)
  np.testing.assert_allclose(bce(jnp.asarray(logits), 0.0), -np.mean(np.log(1 - p)),
                             rtol=1e-5)
  # Where BCELoss on a saturated sigmoid would give inf, the logit form stays exact.
  np.testing.assert_allclose(bce(jnp.array([-200.0]), 1.0), 200.0, rtol=1e-6)


@pytest.mark.parametrize("k,s,p,hw", [(4, 2, 1, 8), (3, 2, 1, 7)])
def test_conv_module_matches_flax_conv_values_and_gradients(k, s, p, hw):
  x = jax.random.normal(jax.random.key(1), (2, hw, hw, 3))
  ours = models.Conv(5, k, s, p)
  ref = nn.Conv(5, (k, k), (s, s), [(p, p), (p, p)], use_bias=False)
  v = ours.init(jax.random.key(2), x)
  assert v["params"]["kernel"].shape == ref.init(jax.random.key(2), x)["params"]["kernel"].shape
  y = ours.apply(v, x)
  np.testing.assert_allclose(y, ref.apply(v, x), atol=1e-5)
  w = jax.random.normal(jax.random.key(3), y.shape)
  loss = lambda m: lambda v, x: jnp.vdot(m.apply(v, x), w)
  g = jax.grad(loss(ours), (0, 1))(v, x)
  g_ref = jax.grad(loss(ref), (0, 1))(v, x)
  np.testing.assert_allclose(g[0]["params"]["kernel"], g_ref[0]["params"]["kernel"],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g[1], g_ref[1], rtol=1e-4, atol=1e-4)


def test_fast_cpu_flags_keep_user_choices():
  from dcgan_jax import cpu_flags
  env = {"XLA_FLAGS": "--xla_cpu_use_onednn=false --xla_force_host_platform_device_count=2"}
  flags = cpu_flags.use_fast_cpu_flags(env).split()
  assert "--xla_cpu_use_onednn=false" in flags and "--xla_cpu_use_onednn=true" not in flags
  assert "--xla_cpu_experimental_onednn_custom_call=true" in flags
  assert "--xla_force_host_platform_device_count=2" in flags
  assert cpu_flags.use_fast_cpu_flags({}).split() == list(cpu_flags.FAST_CPU_FLAGS)
