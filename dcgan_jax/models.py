"""The AnimeGAN DCGAN generator and discriminator in Flax linen.

Both nets mirror the PyTorch original layer for layer (NHWC here, NCHW there):

  G: z (nz) -> ConvT(8ngf, k4 s1 p0) 4px -> ConvT(4ngf, k4 s2 p1) 8px
       -> ConvT(2ngf) 16px -> ConvT(ngf) 32px -> ConvT(3, k5 s3 p1) 96px -> tanh
     every hidden ConvT is followed by BatchNorm + ReLU.
  D: x 96px -> Conv(ndf, k5 s3 p1) 32px + LeakyReLU(0.2)
       -> Conv(2ndf, k4 s2 p1) 16px -> Conv(4ndf) 8px -> Conv(8ndf) 4px
       (each + BatchNorm + LeakyReLU(0.2)) -> Conv(1, k4 s1 p0) 1px -> logit

Initialisation (``init_scheme``): 'pytorch' (the default) is what the original
AnimeGAN got, since it never re-initialises its layers: PyTorch's default
kaiming_uniform(a=sqrt(5)), i.e. kernels ~ U(+-1/sqrt(fan_in)) with torch's
fan_in (in*k*k for Conv2d; out*k*k for ConvTranspose2d, whose weight is
(in, out, k, k)), BatchNorm scale 1, bias 0. 'dcgan' is the DCGAN paper's:
kernels ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), bias 0. Measured here on
the demo's faces, the 'pytorch' init starts G with outputs of std ~0.25 (vs
~0.1), which its discriminator (batch-normalised, so blind to a batch's overall
scale) cannot push up.

BatchNorm uses PyTorch's momentum 0.1 (flax ``momentum=0.9`` is the weight of
the old running average) and eps 1e-5. One difference stays: PyTorch's running
variance uses the unbiased batch variance, flax's the biased one (a factor
n/(n-1) with n = batch*H*W >= 1024 here).

``ConvTranspose`` below is PyTorch's ConvTranspose2d (output size
``(i - 1) * s - 2p + k``). Its kernel is stored as the HWIO kernel of the strided
convolution it is the transpose of (the layout of
``nn.ConvTranspose(transpose_kernel=True)``), and its gradients are computed
through that convolution: XLA differentiates a transposed convolution
directly through an rhs-dilated convolution that is ~50x slower on CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
_DIMS = ("NHWC", "HWIO", "NHWC")

conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def torch_default_init(key, shape, dtype=jnp.float32):
  """PyTorch's default conv init: U(+-1/sqrt(fan_in)).

  Both kernel layouts here, (k, k, in, out) for Conv and (k, k, out, in) for
  ConvTranspose, put torch's fan_in dimensions first: fan_in = k*k*shape[2].
  """
  bound = 1.0 / (shape[0] * shape[1] * shape[2]) ** 0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


INITS = {  # name -> (kernel init, BatchNorm scale init)
    "pytorch": (torch_default_init, nn.initializers.ones),
    "dcgan": (conv_init, bn_scale_init),
}


def _conv(u, kernel, stride: int, padding: int):
  """The strided convolution whose transpose ``conv_transpose`` computes."""
  return lax.conv_general_dilated(
      u, kernel, (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=_DIMS)


def _conv_transpose_fwd_impl(x, kernel, stride, padding):
  k = kernel.shape[0]
  b, h, w, _ = x.shape
  out_hw = ((h - 1) * stride - 2 * padding + k, (w - 1) * stride - 2 * padding + k)
  u0 = jnp.zeros((b, *out_hw, kernel.shape[2]), x.dtype)
  _, vjp = jax.vjp(lambda u: _conv(u, kernel, stride, padding), u0)
  return vjp(x)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose_dilated(x, kernel, stride: int, padding: int):
  """PyTorch ``conv_transpose2d`` in NHWC.

  Args:
    x: (B, H, W, Cin) input.
    kernel: (k, k, Cout, Cin): the HWIO kernel of the strided convolution
      ``conv(y, kernel, stride, padding)`` mapping the output back to x's shape.
    stride: the stride.
    padding: PyTorch's ``padding`` (cropped from each side of the output).

  Returns:
    (B, (H-1)*stride - 2*padding + k, ..., Cout).
  """
  return _conv_transpose_fwd_impl(x, kernel, stride, padding)


def _conv_transpose_fwd(x, kernel, stride, padding):
  return _conv_transpose_fwd_impl(x, kernel, stride, padding), (x, kernel)


def _conv_transpose_bwd(stride, padding, res, dy):
  x, kernel = res
  # y = C^T x with C the strided conv: dx = C dy, and dkernel is the kernel
  # gradient of C at input dy with output cotangent x: both ordinary convs.
  dx = _conv(dy, kernel, stride, padding)
  _, vjp_k = jax.vjp(lambda k: _conv(dy, k, stride, padding), kernel)
  return dx, vjp_k(x)[0]


conv_transpose_dilated.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _phase_taps(k: int, s: int, p: int, size_in: int, r: int):
  """1-D sub-pixel phase ``r`` of a transposed conv: (t0, pad_lo, pad_hi, n_out).

  Output rows o = s*m + r receive x[m + q - j] * kernel[t0 + s*j] for
  t0 = (r + p) mod s, q = (r + p) // s: a stride-1 correlation of x with the
  taps t0 + s*(J-1), ..., t0 (reversed), padded so it yields ``n_out`` rows.
  """
  size_out = (size_in - 1) * s - 2 * p + k
  t0, q = (r + p) % s, (r + p) // s
  num_taps = len(range(t0, k, s))
  n_out = len(range(r, size_out, s))
  lo = num_taps - 1 - q
  hi = n_out + num_taps - 1 - size_in - lo
  return t0, lo, hi, n_out


def conv_transpose_subpixel(x, kernel, stride: int, padding: int):
  """``conv_transpose`` as stride**2 stride-1 convolutions + depth-to-space.

  Every output phase (o mod stride) of a transposed convolution is an
  ordinary stride-1 convolution of the input with a sub-kernel; the phases are
  interleaved back. Same FLOPs as the transposed conv, and XLA differentiates
  stride-1 convolutions at full speed. Needs the output size divisible by the
  stride (true for every layer here); arguments as ``conv_transpose``.
  """
  k, s = kernel.shape[0], stride
  b, h, w, _ = x.shape
  rows = [_phase_taps(k, s, padding, h, r) for r in range(s)]
  cols = [_phase_taps(k, s, padding, w, r) for r in range(s)]
  if len({r[3] for r in rows}) > 1 or len({c[3] for c in cols}) > 1:
    raise ValueError("conv_transpose_subpixel needs output size % stride == 0")
  kio = jnp.swapaxes(kernel, 2, 3)  # (k, k, in, out): HWIO of the phase convs
  phases = []
  for ty, lo_y, hi_y, _ in rows:
    row = []
    for tx, lo_x, hi_x, _ in cols:
      # taps t0 + s*j, reversed, as a strided slice and a flip (index arrays
      # made XLA gather the sub-kernel in every call).
      sub = lax.rev(kio[ty::s, tx::s], (0, 1))
      row.append(lax.conv_general_dilated(
          x, sub, (1, 1), [(lo_y, hi_y), (lo_x, hi_x)], dimension_numbers=_DIMS))
    phases.append(jnp.stack(row, axis=3))  # (B, M, N, sx, C)
  y = jnp.stack(phases, axis=2)  # (B, M, sy, N, sx, C)
  m, n = rows[0][3], cols[0][3]
  return y.reshape(b, m * s, n * s, kernel.shape[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose_hybrid(x, kernel, stride: int, padding: int):
  """Sub-pixel forward, backward through the strided conv (as ``conv_transpose_dilated``)."""
  return conv_transpose_subpixel(x, kernel, stride, padding)


conv_transpose_hybrid.defvjp(
    lambda x, kernel, s, p: (conv_transpose_subpixel(x, kernel, s, p), (x, kernel)),
    _conv_transpose_bwd)


conv = _conv  # the plain strided conv (HWIO kernel), XLA's own gradients


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_subpixel_grad(x, kernel, stride: int, padding: int):
  """Strided conv whose input gradient is the sub-pixel transposed conv."""
  return _conv(x, kernel, stride, padding)


def _conv_sp_fwd(x, kernel, stride, padding):
  return _conv(x, kernel, stride, padding), (x, kernel)


def _conv_sp_bwd(stride, padding, res, dy):
  x, kernel = res
  k = kernel.shape[0]
  back = [(n - 1) * stride - 2 * padding + k for n in dy.shape[1:3]]
  if back == list(x.shape[1:3]) and all(n % stride == 0 for n in back):
    dx = conv_transpose_subpixel(dy, kernel, stride, padding)
  else:  # the stride does not tile the input: XLA's own input gradient
    dx = jax.vjp(lambda u: _conv(u, kernel, stride, padding), x)[1](dy)[0]
  _, vjp_k = jax.vjp(lambda k: _conv(x, k, stride, padding), kernel)
  return dx, vjp_k(dy)[0]


conv_subpixel_grad.defvjp(_conv_sp_fwd, _conv_sp_bwd)

def conv_transpose_dense(x, kernel, stride: int, padding: int):
  """``conv_transpose`` of a 1x1 input without padding, as a dense layer.

  From a single pixel every output pixel is one kernel tap (any stride), so
  the layer is a matmul: measured ~4x faster than the conv forms (bench/).
  """
  if x.shape[1:3] != (1, 1) or padding:
    raise ValueError("conv_transpose_dense needs a 1x1 input and padding 0")
  del stride
  return jnp.einsum("bc,yxoc->byxo", x[:, 0, 0], kernel)


CONV_TRANSPOSE_IMPLS = {
    "dilated": conv_transpose_dilated,
    "subpixel": conv_transpose_subpixel,
    "hybrid": conv_transpose_hybrid,
}
CONV_IMPLS = {"xla": conv, "subpixel": conv_subpixel_grad}


def conv_transpose(x, kernel, stride: int, padding: int):
  """PyTorch ``conv_transpose2d`` in NHWC, in its fastest XLA:CPU form.

  Measured per layer (bench/layers.py): stride 2 runs fastest as the
  sub-pixel forward with the strided-conv backward; the 3x-upsampling last
  layer (9 phases of 3 channels) as the lhs-dilated forward. Arguments and
  result as ``conv_transpose_dilated``.
  """
  if stride == 2:
    return conv_transpose_hybrid(x, kernel, stride, padding)
  return conv_transpose_dilated(x, kernel, stride, padding)


class _BiaslessConv(nn.Module):
  """What Conv and ConvTranspose share: sizes, dtype, init, the kernel."""

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32
  init_scheme: str = "pytorch"

  def _cast_kernel(self, x, io: tuple[int, int]):
    """The (k, k, *io) float32 kernel, and x and it in the compute dtype."""
    k = self.kernel_size
    kernel = self.param("kernel", INITS[self.init_scheme][0], (k, k, *io), jnp.float32)
    return x.astype(self.dtype), kernel.astype(self.dtype)


class Conv(_BiaslessConv):
  """``nn.Conv`` without bias (same parameter), fast to differentiate on XLA:CPU.

  Stride-2 layers take their input gradient as a sub-pixel transposed conv
  (``conv_subpixel_grad``), measured faster than XLA's lhs-dilated one.
  """

  @nn.compact
  def __call__(self, x):
    x, kernel = self._cast_kernel(x, (x.shape[-1], self.features))
    fn = conv_subpixel_grad if self.stride == 2 else conv
    return fn(x, kernel, self.stride, self.padding)


class ConvTranspose(_BiaslessConv):
  """PyTorch-style ConvTranspose2d without bias, fast to differentiate on XLA."""

  @nn.compact
  def __call__(self, x):
    x, kernel = self._cast_kernel(x, (self.features, x.shape[-1]))
    if x.shape[1:3] == (1, 1) and self.padding == 0:
      return conv_transpose_dense(x, kernel, self.stride, self.padding)
    return conv_transpose(x, kernel, self.stride, self.padding)


def _batch_norm(train: bool, axis_name: str | None, dtype: Dtype, init: str, name: str):
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name, scale_init=INITS[init][1], dtype=dtype, name=name)


class Generator(nn.Module):
  """z (B, nz) -> images (B, 96, 96, 3) in [-1, 1].

  Attributes:
    nz: latent size.
    ngf: width of the last hidden layer (others are 2x, 4x, 8x).
    bn_axis_name: if set, BatchNorm statistics are averaged over this mapped
      axis (cross-replica statistics for data-parallel training).
    dtype: computation dtype (parameters stay float32).
    init_scheme: 'pytorch' (the original's) or 'dcgan' initialisation.
  """

  nz: int = 100
  ngf: int = 64
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  init_scheme: str = "pytorch"

  @nn.compact
  def __call__(self, z, train: bool = True):
    x = z.reshape(z.shape[0], 1, 1, -1).astype(self.dtype)
    widths = (8, 4, 2, 1)
    for i, mult in enumerate(widths):
      stride, padding = (1, 0) if i == 0 else (2, 1)
      x = ConvTranspose(self.ngf * mult, 4, stride, padding, dtype=self.dtype,
                        init_scheme=self.init_scheme, name=f"convt{i}")(x)
      x = _batch_norm(train, self.bn_axis_name, self.dtype, self.init_scheme, f"bn{i}")(x)
      x = nn.relu(x)
    x = ConvTranspose(3, 5, 3, 1, dtype=self.dtype, init_scheme=self.init_scheme, name="convt4")(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """images (B, 96, 96, 3) -> logits (B,). sigmoid(logit) is the original's D(x)."""

  ndf: int = 64
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  init_scheme: str = "pytorch"

  @nn.compact
  def __call__(self, x, train: bool = True):
    def conv(features, k, s, p, name):
      return Conv(features, k, s, p, dtype=self.dtype, init_scheme=self.init_scheme, name=name)

    x = conv(self.ndf, 5, 3, 1, "conv0")(x.astype(self.dtype))
    x = nn.leaky_relu(x, 0.2)
    for i, mult in enumerate((2, 4, 8), start=1):
      x = conv(self.ndf * mult, 4, 2, 1, f"conv{i}")(x)
      x = _batch_norm(train, self.bn_axis_name, self.dtype, self.init_scheme, f"bn{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = conv(1, 4, 1, 0, "conv4")(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
