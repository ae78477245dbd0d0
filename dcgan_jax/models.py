"""The AnimeGAN DCGAN generator and discriminator in Flax linen.

Both nets mirror the PyTorch original layer for layer (NHWC here, NCHW there):

  G: z (nz) -> ConvT(8ngf, k4 s1 p0) 4px -> ConvT(4ngf, k4 s2 p1) 8px
       -> ConvT(2ngf) 16px -> ConvT(ngf) 32px -> ConvT(3, k5 s3 p1) 96px -> tanh
     every hidden ConvT is followed by BatchNorm + ReLU.
  D: x 96px -> Conv(ndf, k5 s3 p1) 32px + LeakyReLU(0.2)
       -> Conv(2ndf, k4 s2 p1) 16px -> Conv(4ndf) 8px -> Conv(8ndf) 4px
       (each + BatchNorm + LeakyReLU(0.2)) -> Conv(1, k4 s1 p0) 1px -> logit

Initialisation follows the DCGAN paper (and the PyTorch reference benchmark):
convolution kernels ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), BatchNorm bias 0.
The original AnimeGAN script itself kept PyTorch's default init; DCGAN's is the
one every later port uses and trains more reliably.

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
def conv_transpose(x, kernel, stride: int, padding: int):
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


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class ConvTranspose(nn.Module):
  """PyTorch-style ConvTranspose2d without bias, fast to differentiate on XLA."""

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", conv_init, (k, k, self.features, x.shape[-1]),
                        jnp.float32)
    return conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype),
                          self.stride, self.padding)


def _batch_norm(train: bool, axis_name: str | None, dtype: Dtype, name: str):
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name, scale_init=bn_scale_init, dtype=dtype, name=name)


class Generator(nn.Module):
  """z (B, nz) -> images (B, 96, 96, 3) in [-1, 1].

  Attributes:
    nz: latent size.
    ngf: width of the last hidden layer (others are 2x, 4x, 8x).
    bn_axis_name: if set, BatchNorm statistics are averaged over this mapped
      axis (cross-replica statistics for data-parallel training).
    dtype: computation dtype (parameters stay float32).
  """

  nz: int = 100
  ngf: int = 64
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = True):
    x = z.reshape(z.shape[0], 1, 1, -1).astype(self.dtype)
    widths = (8, 4, 2, 1)
    for i, mult in enumerate(widths):
      stride, padding = (1, 0) if i == 0 else (2, 1)
      x = ConvTranspose(self.ngf * mult, 4, stride, padding, dtype=self.dtype,
                        name=f"convt{i}")(x)
      x = _batch_norm(train, self.bn_axis_name, self.dtype, f"bn{i}")(x)
      x = nn.relu(x)
    x = ConvTranspose(3, 5, 3, 1, dtype=self.dtype, name="convt4")(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """images (B, 96, 96, 3) -> logits (B,). sigmoid(logit) is the original's D(x)."""

  ndf: int = 64
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    def conv(features, k, s, p, name):
      return nn.Conv(features, (k, k), (s, s), [(p, p), (p, p)], use_bias=False,
                     kernel_init=conv_init, dtype=self.dtype, name=name)

    x = conv(self.ndf, 5, 3, 1, "conv0")(x.astype(self.dtype))
    x = nn.leaky_relu(x, 0.2)
    for i, mult in enumerate((2, 4, 8), start=1):
      x = conv(self.ndf * mult, 4, 2, 1, f"conv{i}")(x)
      x = _batch_norm(train, self.bn_axis_name, self.dtype, f"bn{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = conv(1, 4, 1, 0, "conv4")(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
