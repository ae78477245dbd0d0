"""The AnimeGAN generator and discriminator, layer for layer as the PyTorch original.

  G: z (nz) -> ConvT(8ngf, k4 s1 p0) 4px -> ConvT(4ngf, k4 s2 p1) 8px
       -> ConvT(2ngf) 16px -> ConvT(ngf) 32px -> ConvT(3, k5 s3 p1) 96px -> tanh,
     each hidden ConvT followed by BatchNorm + ReLU.
  D: x 96px -> Conv(ndf, k5 s3 p1) 32px + LeakyReLU(0.2) -> Conv(2ndf, k4 s2 p1)
       16px -> Conv(4ndf) 8px -> Conv(8ndf) 4px (each + BatchNorm + LeakyReLU)
       -> Conv(1, k4 s1 p0) -> logit

``upsample='resize'`` replaces G's strided ConvTransposes after the first with
nearest-neighbour upsampling and a 3x3 Conv (Odena et al. 2016, "Deconvolution
and Checkerboard Artifacts"): one kernel computes every output pixel, where a
strided ConvTranspose computes each phase of the stride with a different part of
its kernel and so stamps a grid pattern on the image. It costs about 2.3x the
multiply-adds of the original's G.

``init_scheme='pytorch'`` is what the original got, never re-initialising its
layers: kernels ~ U(+-1/sqrt(fan_in)) with torch's fan_in, BatchNorm scale 1;
'dcgan' is the DCGAN paper's N(0, 0.02). BatchNorm has PyTorch's momentum and
eps; its running variance is the biased one (PyTorch keeps the unbiased).
The modules own the kernels (HWIO, ``ConvTranspose`` the kernel of the conv
it transposes); ``conv_ops`` computes them, so checkpoints do not depend on how.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dcgan_jax import conv_ops

Dtype = Any

conv_init = nn.initializers.normal(stddev=0.02)
UPSAMPLES = ("transpose", "resize")  # G's upsampling: the original's | resize-convolution


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


class _BiaslessConv(nn.Module):
  """What Conv and ConvTranspose share: sizes, dtype, init, the kernel."""

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32
  init_scheme: str = "pytorch"
  conv_impl: str = "auto"   # conv_ops.IMPLS

  def _cast_kernel(self, x, io: tuple[int, int]):
    """The (k, k, *io) float32 kernel, and x and it in the compute dtype."""
    k = self.kernel_size
    kernel = self.param("kernel", INITS[self.init_scheme][0], (k, k, *io), jnp.float32)
    return x.astype(self.dtype), kernel.astype(self.dtype)


class Conv(_BiaslessConv):
  """``nn.Conv`` without bias (the same parameter), computed by ``conv_ops.conv``."""

  @nn.compact
  def __call__(self, x):
    x, kernel = self._cast_kernel(x, (x.shape[-1], self.features))
    return conv_ops.conv(x, kernel, self.stride, self.padding,
                         conv_ops.resolve(self.conv_impl))


class ConvTranspose(_BiaslessConv):
  """PyTorch's ConvTranspose2d without bias, computed by ``conv_ops.conv_transpose``."""

  @nn.compact
  def __call__(self, x):
    x, kernel = self._cast_kernel(x, (self.features, x.shape[-1]))
    return conv_ops.conv_transpose(x, kernel, self.stride, self.padding,
                                   conv_ops.resolve(self.conv_impl))


def _batch_norm(train: bool, axis_name: str | None, dtype: Dtype, init: str, name: str):
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name, scale_init=INITS[init][1], dtype=dtype, name=name)


class Generator(nn.Module):
  """z (B, nz) -> images (B, 96, 96, 3) in [-1, 1].

  ``ngf`` is the last hidden layer's width; ``bn_axis_name`` averages
  BatchNorm statistics over a mapped axis; parameters stay float32 whatever
  ``dtype`` computes in; ``upsample`` is one of ``UPSAMPLES``.
  """

  nz: int = 100
  ngf: int = 64
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  init_scheme: str = "pytorch"
  conv_impl: str = "auto"
  upsample: str = "transpose"

  @nn.compact
  def __call__(self, z, train: bool = True):
    def up(x, features, k, stride, padding, i):
      kw = dict(dtype=self.dtype, init_scheme=self.init_scheme, conv_impl=self.conv_impl)
      if self.upsample == "transpose" or i == 0:  # 1 -> 4 px is dense: no grid to leave
        return ConvTranspose(features, k, stride, padding, name=f"convt{i}", **kw)(x)
      x = jnp.repeat(jnp.repeat(x, stride, axis=1), stride, axis=2)
      return Conv(features, 3, 1, 1, name=f"conv{i}", **kw)(x)

    x = z.reshape(z.shape[0], 1, 1, -1).astype(self.dtype)
    for i, mult in enumerate((8, 4, 2, 1)):
      stride, padding = (1, 0) if i == 0 else (2, 1)
      x = up(x, self.ngf * mult, 4, stride, padding, i)
      x = _batch_norm(train, self.bn_axis_name, self.dtype, self.init_scheme, f"bn{i}")(x)
      x = nn.relu(x)
    x = up(x, 3, 5, 3, 1, 4)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """images (B, 96, 96, 3) -> logits (B,). sigmoid(logit) is the original's D(x).

  ``spectral_norm`` divides every kernel by its largest singular value
  (Miyato et al. 2018; one power iteration per training pass, its vectors in
  ``batch_stats`` under ``conv{i}_sn``); ``batch_norm=False`` drops D's BatchNorm.
  """

  ndf: int = 64
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  init_scheme: str = "pytorch"
  conv_impl: str = "auto"
  spectral_norm: bool = False
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool = True):
    def conv(x, features, k, s, p, name):
      layer = Conv(features, k, s, p, dtype=self.dtype, init_scheme=self.init_scheme,
                   conv_impl=self.conv_impl, name=name)
      if self.spectral_norm:  # the kernel keeps its name; u and sigma go to {name}_sn
        return nn.SpectralNorm(layer, name=f"{name}_sn")(x, update_stats=train)
      return layer(x)

    x = conv(x.astype(self.dtype), self.ndf, 5, 3, 1, "conv0")
    x = nn.leaky_relu(x, 0.2)
    for i, mult in enumerate((2, 4, 8), start=1):
      x = conv(x, self.ndf * mult, 4, 2, 1, f"conv{i}")
      if self.batch_norm:
        x = _batch_norm(train, self.bn_axis_name, self.dtype, self.init_scheme, f"bn{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = conv(x, 1, 4, 1, 0, "conv4")
    return x.reshape(x.shape[0]).astype(jnp.float32)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
