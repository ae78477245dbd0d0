"""Every convolution formulation equals flax's, in values and both gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import conv_ops, models


@pytest.mark.parametrize("impl", sorted(conv_ops.CONV_TRANSPOSE_FORMS))
@pytest.mark.parametrize("k,s,p,hw", [(4, 2, 1, 4), (5, 3, 1, 4), (3, 2, 0, 3)])
def test_every_conv_transpose_formulation_matches_flax(impl, k, s, p, hw):
  fn = conv_ops.CONV_TRANSPOSE_FORMS[impl]
  x = jax.random.normal(jax.random.key(1), (2, hw, hw + 1, 3))
  kernel = jax.random.normal(jax.random.key(2), (k, k, 4, 3))
  ref = nn.ConvTranspose(4, (k, k), (s, s), padding=[(k - 1 - p, k - 1 - p)] * 2,
                         use_bias=False, transpose_kernel=True)
  ref_fn = lambda x, kernel: ref.apply({"params": {"kernel": kernel}}, x)
  out_hw = ((hw - 1) * s - 2 * p + k, hw * s - 2 * p + k)
  if impl in ("subpixel", "hybrid") and (out_hw[0] % s or out_hw[1] % s):
    with pytest.raises(ValueError, match="stride"):
      fn(x, kernel, s, p)
    return
  y, y_ref = fn(x, kernel, s, p), ref_fn(x, kernel)
  assert y.shape == (2, *out_hw, 4)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), y.shape)
  g = jax.grad(lambda x, k: jnp.vdot(fn(x, k, s, p), w), (0, 1))(x, kernel)
  g_ref = jax.grad(lambda x, k: jnp.vdot(ref_fn(x, k), w), (0, 1))(x, kernel)
  for a, b in zip(g, g_ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", sorted(conv_ops.CONV_FORMS))
@pytest.mark.parametrize("k,s,p,hw", [(4, 2, 1, 8), (5, 3, 1, 8), (4, 1, 0, 4), (3, 2, 1, 7)])
def test_every_conv_formulation_matches_flax(impl, k, s, p, hw):
  fn = conv_ops.CONV_FORMS[impl]
  x = jax.random.normal(jax.random.key(1), (2, hw, hw, 3))
  kernel = jax.random.normal(jax.random.key(2), (k, k, 3, 4))
  ref = nn.Conv(4, (k, k), (s, s), [(p, p), (p, p)], use_bias=False)
  ref_fn = lambda x, kernel: ref.apply({"params": {"kernel": kernel}}, x)
  y, y_ref = fn(x, kernel, s, p), ref_fn(x, kernel)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  w = jax.random.normal(jax.random.key(3), y.shape)
  g = jax.grad(lambda x, k: jnp.vdot(fn(x, k, s, p), w), (0, 1))(x, kernel)
  g_ref = jax.grad(lambda x, k: jnp.vdot(ref_fn(x, k), w), (0, 1))(x, kernel)
  for a, b in zip(g, g_ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_first_layer_dense_form_matches_conv_transpose():
  # A 1x1 input (the latent) takes the einsum path in ConvTranspose.
  z = jax.random.normal(jax.random.key(0), (3, 1, 1, 6))
  layer = models.ConvTranspose(5, 4, 1, 0, conv_impl="cpu")
  v = layer.init(jax.random.key(1), z)
  y = layer.apply(v, z)
  np.testing.assert_allclose(
      y, conv_ops.conv_transpose_dilated(z, v["params"]["kernel"], 1, 0), atol=1e-5)
  with pytest.raises(ValueError, match="1x1"):
    conv_ops.conv_transpose_dense(jnp.zeros((1, 2, 2, 6)), v["params"]["kernel"], 1, 0)
  gk = jax.grad(lambda v: jnp.sum(layer.apply(v, z) ** 2))(v)["params"]["kernel"]
  gk_ref = jax.grad(lambda k: jnp.sum(conv_ops.conv_transpose_dilated(z, k, 1, 0) ** 2))(
      v["params"]["kernel"])
  np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-5)


def test_conv_transpose_matches_pytorch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
  wt = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)  # (in, out, k, k)
  y_t = torch.nn.functional.conv_transpose2d(
      torch.from_numpy(x), torch.from_numpy(wt), stride=3, padding=1).numpy()
  kernel = wt.transpose(2, 3, 1, 0)  # -> (k, k, out, in)
  y = conv_ops.conv_transpose(jnp.asarray(x.transpose(0, 2, 3, 1)), kernel, 3, 1)
  np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), y_t, atol=1e-4)


def test_auto_is_the_cpu_forms_on_cpu_and_xla_elsewhere(monkeypatch):
  assert conv_ops.resolve("auto") == "cpu"  # these tests run on the CPU
  for backend, want in (("gpu", "xla"), ("tpu", "xla"), ("cpu", "cpu")):
    monkeypatch.setattr(conv_ops.jax, "default_backend", lambda b=backend: b)
    assert conv_ops.resolve("auto") == want
  assert conv_ops.resolve("xla") == "xla" and conv_ops.resolve("cpu") == "cpu"
  with pytest.raises(ValueError, match="conv_impl='cudnn'"):
    conv_ops.resolve("cudnn")


@pytest.mark.slow  # both nets' gradients compiled twice: ~25 s (each form is tested above)
def test_both_forms_give_the_same_nets_values_and_gradients():
  z = jax.random.normal(jax.random.key(0), (4, 100))
  x = jax.random.normal(jax.random.key(1), (4, 96, 96, 3))
  for net, inp in ((models.Generator(ngf=8), z), (models.Discriminator(ndf=8), x)):
    v = net.init(jax.random.key(2), inp)
    outs = {}
    for impl in ("cpu", "xla"):
      m = net.clone(conv_impl=impl)
      f = lambda p, inp, m=m, v=v: jnp.sum(m.apply({**v, "params": p}, inp,
                                                   mutable=["batch_stats"])[0] ** 2)
      outs[impl] = (f(v["params"], inp), jax.grad(f, (0, 1))(v["params"], inp))
    np.testing.assert_allclose(outs["cpu"][0], outs["xla"][0], rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(outs["cpu"][1]),
                    jax.tree_util.tree_leaves(outs["xla"][1]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))
