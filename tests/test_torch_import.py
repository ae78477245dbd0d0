"""The original's state dicts -> our models, checked against independent references.

Without torch: a hand-written archive (archive.save_state_dict) of random
weights in the original's layout, and a numpy reference of the original's
layers computed straight from the torch-layout arrays (NCHW, torch's
conv_transpose2d / conv2d definitions). With torch installed: the original's
nn.Sequential nets themselves.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import models
from dcgan_jax.pytorch import archive, original

NZ, NGF, NDF = 6, 2, 2


def _random_state_dicts(seed=0):
  """netg/netd state dicts in the original's layout, with non-trivial BN stats."""
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)

  def bn(sd, i, c):
    sd[f"main.{i}.weight"] = 1 + f(c)
    sd[f"main.{i}.bias"] = f(c)
    sd[f"main.{i}.running_mean"] = f(c)
    sd[f"main.{i}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)
    sd[f"main.{i}.num_batches_tracked"] = np.array(7, np.int64)

  g = collections.OrderedDict()
  widths = [NZ, 8 * NGF, 4 * NGF, 2 * NGF, NGF]
  for layer in range(4):
    g[f"main.{3 * layer}.weight"] = f(widths[layer], widths[layer + 1], 4, 4)  # (in, out, k, k)
    bn(g, 3 * layer + 1, widths[layer + 1])
  g["main.12.weight"] = f(NGF, 3, 5, 5)
  d = collections.OrderedDict()
  d["main.0.weight"] = f(NDF, 3, 5, 5)  # (out, in, k, k)
  for i, (cin, cout) in enumerate([(1, 2), (2, 4), (4, 8)]):
    d[f"main.{3 * i + 2}.weight"] = f(cout * NDF, cin * NDF, 4, 4)
    bn(d, 3 * i + 3, cout * NDF)
  d["main.11.weight"] = f(1, 8 * NDF, 4, 4)
  return g, d


# --- A numpy reference of the original's layers (NCHW, torch's definitions). ---
def _conv2d(x, w, s, p):
  """torch.nn.functional.conv2d, bias-free: x (B,C,H,W), w (O,C,k,k)."""
  x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  k = w.shape[-1]
  ho, wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
  out = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for i in range(k):
    for j in range(k):
      patch = x[:, :, i:i + s * ho:s, j:j + s * wo:s]
      out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
  return out


def _conv_transpose2d(x, w, s, p):
  """torch conv_transpose2d, bias-free: x (B,I,H,W), w (I,O,k,k); scatter form."""
  b, _, h, wd = x.shape
  k = w.shape[-1]
  full = np.zeros((b, w.shape[1], (h - 1) * s + k, (wd - 1) * s + k))
  for i in range(k):
    for j in range(k):
      full[:, :, i:i + s * h:s, j:j + s * wd:s] += np.einsum("bihw,io->bohw", x, w[:, :, i, j])
  return full[:, :, p:full.shape[2] - p, p:full.shape[3] - p]


def _bn(x, sd, i):
  r = lambda n: sd[f"main.{i}.{n}"][None, :, None, None].astype(np.float64)
  return (x - r("running_mean")) / np.sqrt(r("running_var") + 1e-5) * r("weight") + r("bias")


def _reference_g(sd, z):
  x = z.reshape(len(z), -1, 1, 1).astype(np.float64)
  for layer in range(4):
    s, p = (1, 0) if layer == 0 else (2, 1)
    x = np.maximum(_bn(_conv_transpose2d(x, sd[f"main.{3 * layer}.weight"], s, p), sd,
                       3 * layer + 1), 0)
  return np.tanh(_conv_transpose2d(x, sd["main.12.weight"], 3, 1))


def _reference_d(sd, x):
  lrelu = lambda v: np.where(v > 0, v, 0.2 * v)
  x = lrelu(_conv2d(x.astype(np.float64), sd["main.0.weight"], 3, 1))
  for i in range(3):
    x = lrelu(_bn(_conv2d(x, sd[f"main.{3 * i + 2}.weight"], 2, 1), sd, 3 * i + 3))
  return 1 / (1 + np.exp(-_conv2d(x, sd["main.11.weight"], 1, 0).reshape(-1)))


def _ours(g_vars, d_vars, z, x_nchw):
  img = models.Generator(NZ, NGF).apply(g_vars, jnp.asarray(z), train=False)
  logit = models.Discriminator(NDF).apply(d_vars, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)),
                                          train=False)
  return np.asarray(img).transpose(0, 3, 1, 2), np.asarray(jax.nn.sigmoid(logit))


def test_hand_made_archives_load_and_match_a_numpy_reference(tmp_path):
  g_sd, d_sd = _random_state_dicts()
  archive.save_state_dict(str(tmp_path / "netg_199.pth"), g_sd)
  archive.save_state_dict(str(tmp_path / "netd_199.pth"), d_sd)
  g_vars, nz, ngf = original.load_netg(str(tmp_path / "netg_199.pth"))
  d_vars, ndf = original.load_netd(str(tmp_path / "netd_199.pth"))
  assert (nz, ngf, ndf) == (NZ, NGF, NDF)

  rng = np.random.default_rng(1)
  z = rng.normal(size=(2, NZ)).astype(np.float32)
  x = rng.uniform(-1, 1, (2, 3, 96, 96)).astype(np.float32)
  img, prob = _ours(g_vars, d_vars, z, x)
  ref_img, ref_prob = _reference_g(g_sd, z), _reference_d(d_sd, x)
  assert img.shape == ref_img.shape == (2, 3, 96, 96)
  np.testing.assert_allclose(img, ref_img, atol=2e-5)
  np.testing.assert_allclose(prob, ref_prob, atol=2e-5)
  # Not saturated and input-dependent, so the comparison can fail.
  assert 1e-4 < ref_prob.min() and ref_prob.max() < 1 - 1e-4 and np.ptp(ref_prob) > 0.01
  assert img.std() > 0.01  # 1000x the tolerance: a wrong layout cannot pass


def test_keys_without_main_or_with_module_prefix_and_round_trip():
  g_sd, d_sd = _random_state_dicts(2)
  bare = {k.removeprefix("main."): v for k, v in g_sd.items()}
  dp = {"module." + k: v for k, v in d_sd.items()}
  g_vars, _, _ = original.netg_variables(bare)
  d_vars, _ = original.netd_variables(dp)
  back = original.to_torch_state_dict(g_vars, original.G_LAYERS)
  assert set(back) == set(g_sd)
  for k, v in g_sd.items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[k], v, err_msg=k)
  assert d_vars["params"]["conv1"]["kernel"].shape == (4, 4, NDF, 2 * NDF)


def test_wrong_state_dicts_are_named():
  g_sd, d_sd = _random_state_dicts()
  with pytest.raises(ValueError, match=r"netg.*missing '4.running_var'"):
    original.netg_variables({k: v for k, v in g_sd.items() if "4.running_var" not in k})
  with pytest.raises(ValueError, match=r"unexpected keys \['11.bias'\]"):
    original.netd_variables({**d_sd, "main.11.bias": np.zeros(1, np.float32)})
  with pytest.raises(ValueError, match="expected a state dict"):
    original.netg_variables([1, 2])


def _torch_nets(torch, nz, ngf, ndf):
  """The original AnimeGAN NetG / NetD (chenyuntc/pytorch-book, chapter 7)."""
  nn = torch.nn

  class NetG(nn.Module):
    def __init__(self):
      super().__init__()
      self.main = nn.Sequential(
          nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8),
          nn.ReLU(True),
          nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4),
          nn.ReLU(True),
          nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2),
          nn.ReLU(True),
          nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf),
          nn.ReLU(True),
          nn.ConvTranspose2d(ngf, 3, 5, 3, 1, bias=False), nn.Tanh())

    def forward(self, x):
      return self.main(x)

  class NetD(nn.Module):
    def __init__(self):
      super().__init__()
      self.main = nn.Sequential(
          nn.Conv2d(3, ndf, 5, 3, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
          nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
          nn.LeakyReLU(0.2, inplace=True),
          nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
          nn.LeakyReLU(0.2, inplace=True),
          nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
          nn.LeakyReLU(0.2, inplace=True),
          nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
      return self.main(x).view(-1)

  return NetG(), NetD()


def test_torch_saved_nets_give_the_same_outputs(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  netg, netd = _torch_nets(torch, NZ, NGF, NDF)
  # A few training-mode passes give the BatchNorms non-trivial running stats.
  with torch.no_grad():
    for _ in range(3):
      netd(netg(torch.randn(8, NZ, 1, 1)))
  netg.eval()
  netd.eval()
  torch.save(netg.state_dict(), tmp_path / "netg.pth")
  torch.save(netd.state_dict(), tmp_path / "netd.pth")
  g_vars, _, _ = original.load_netg(str(tmp_path / "netg.pth"))
  d_vars, _ = original.load_netd(str(tmp_path / "netd.pth"))

  z = np.random.default_rng(3).normal(size=(4, NZ)).astype(np.float32)
  with torch.no_grad():
    t_img = netg(torch.from_numpy(z).view(4, NZ, 1, 1))
    t_prob = netd(t_img).numpy()
  img, prob = _ours(g_vars, d_vars, z, t_img.numpy())
  np.testing.assert_allclose(img, t_img.numpy(), atol=2e-5)
  np.testing.assert_allclose(prob, t_prob, atol=2e-5)
