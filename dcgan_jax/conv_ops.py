"""The convolutions of the DCGAN's layers, one formulation per backend.

Every function here takes NHWC inputs and the kernel layout of the strided
convolution (HWIO): ``conv(x, kernel, stride, padding)`` is PyTorch's
``conv2d``, and ``conv_transpose(x, kernel, stride, padding)`` is PyTorch's
``conv_transpose2d`` with the kernel stored as the HWIO kernel of the strided
convolution it is the transpose of, i.e. (k, k, out, in), the layout of
``flax.linen.ConvTranspose(transpose_kernel=True)``. Output size:
``(i - 1) * stride - 2 * padding + k``.

Two sets of formulations (``config.conv_impl``):

* ``'xla'``: XLA's own convolutions (``lax.conv_general_dilated`` and
  ``lax.conv_transpose``) and the gradients XLA derives for them.
* ``'cpu'``: formulations that XLA:CPU runs fast. XLA differentiates a
  transposed convolution through an rhs-dilated convolution, which is ~50x
  slower on CPU than an ordinary convolution of the same FLOPs. Here:
  - a 1x1 input (G's first layer) is a dense layer (``conv_transpose_dense``);
  - stride 2 is a sub-pixel forward (stride**2 stride-1 convolutions,
    interleaved) with the backward through the strided convolution
    (``conv_transpose_hybrid``);
  - otherwise (G's 3x upsampling last layer) the lhs-dilated forward with the
    same backward (``conv_transpose_dilated``);
  - D's stride-2 convolutions take their input gradient as a sub-pixel
    transposed convolution (``conv_subpixel_grad``).
  Each was chosen per layer on XLA:CPU (bench/README.md, "Formulations").

``'auto'`` (the default) is ``'cpu'`` on the CPU backend and ``'xla'`` on every
other one, until a measurement on that backend says otherwise. Every form is
tested equal to ``flax.linen.Conv`` / ``ConvTranspose`` in values and both
gradients (tests/test_conv_ops.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "cpu", "xla")  # config.conv_impl


def resolve(impl: str = "auto") -> str:
  """``'cpu'`` or ``'xla'``: what ``impl`` means on this process's backend."""
  if impl not in IMPLS:
    raise ValueError(f"conv_impl={impl!r}: expected one of {IMPLS}.")
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return impl


def xla_conv(u, kernel, stride: int, padding: int):
  """The strided convolution (HWIO kernel), XLA's own gradients."""
  return lax.conv_general_dilated(
      u, kernel, (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=_DIMS)


def xla_conv_transpose(x, kernel, stride: int, padding: int):
  """The transposed convolution as XLA computes it (``nn.ConvTranspose``'s)."""
  k = kernel.shape[0]
  return lax.conv_transpose(
      x, kernel, (stride, stride), [(k - 1 - padding, k - 1 - padding)] * 2,
      dimension_numbers=_DIMS, transpose_kernel=True)


def _conv_transpose_fwd_impl(x, kernel, stride, padding):
  k = kernel.shape[0]
  b, h, w, _ = x.shape
  out_hw = ((h - 1) * stride - 2 * padding + k, (w - 1) * stride - 2 * padding + k)
  u0 = jnp.zeros((b, *out_hw, kernel.shape[2]), x.dtype)
  _, vjp = jax.vjp(lambda u: xla_conv(u, kernel, stride, padding), u0)
  return vjp(x)[0]


def _conv_transpose_bwd(stride, padding, res, dy):
  x, kernel = res
  # y = C^T x with C the strided conv: dx = C dy, and dkernel is the kernel
  # gradient of C at input dy with output cotangent x: both ordinary convs.
  dx = xla_conv(dy, kernel, stride, padding)
  _, vjp_k = jax.vjp(lambda k: xla_conv(dy, k, stride, padding), kernel)
  return dx, vjp_k(x)[0]


def _with_strided_backward(forward):
  """``forward`` (a transposed conv) with its gradients through the strided conv."""
  fn = jax.custom_vjp(forward, nondiff_argnums=(2, 3))
  fn.defvjp(lambda x, kernel, s, p: (forward(x, kernel, s, p), (x, kernel)),
            _conv_transpose_bwd)
  return fn


# Lhs-dilated forward (the vjp of the strided conv), strided-conv backward.
conv_transpose_dilated = _with_strided_backward(_conv_transpose_fwd_impl)


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
  """The transposed conv as stride**2 stride-1 convolutions + depth-to-space.

  Every output phase (o mod stride) of a transposed convolution is an
  ordinary stride-1 convolution of the input with a sub-kernel; the phases are
  interleaved back. Same FLOPs as the transposed conv, and XLA differentiates
  stride-1 convolutions at full speed. Needs the output size divisible by the
  stride (true for every stride-2 layer here).
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


# Sub-pixel forward, strided-conv backward.
conv_transpose_hybrid = _with_strided_backward(conv_transpose_subpixel)


def conv_transpose_dense(x, kernel, stride: int, padding: int):
  """The transposed conv of a 1x1 input without padding, as a dense layer.

  From a single pixel every output pixel is one kernel tap (any stride), so
  the layer is a matmul.
  """
  if x.shape[1:3] != (1, 1) or padding:
    raise ValueError("conv_transpose_dense needs a 1x1 input and padding 0")
  del stride
  return jnp.einsum("bc,yxoc->byxo", x[:, 0, 0], kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_subpixel_grad(x, kernel, stride: int, padding: int):
  """Strided conv whose input gradient is the sub-pixel transposed conv."""
  return xla_conv(x, kernel, stride, padding)


def _conv_sp_bwd(stride, padding, res, dy):
  x, kernel = res
  k = kernel.shape[0]
  back = [(n - 1) * stride - 2 * padding + k for n in dy.shape[1:3]]
  if back == list(x.shape[1:3]) and all(n % stride == 0 for n in back):
    dx = conv_transpose_subpixel(dy, kernel, stride, padding)
  else:  # the stride does not tile the input: XLA's own input gradient
    dx = jax.vjp(lambda u: xla_conv(u, kernel, stride, padding), x)[1](dy)[0]
  _, vjp_k = jax.vjp(lambda k: xla_conv(x, k, stride, padding), kernel)
  return dx, vjp_k(dy)[0]


conv_subpixel_grad.defvjp(
    lambda x, kernel, s, p: (xla_conv(x, kernel, s, p), (x, kernel)), _conv_sp_bwd)

# Every formulation by name (benchmarks and tests).
CONV_TRANSPOSE_FORMS = {
    "xla": xla_conv_transpose,
    "dilated": conv_transpose_dilated,
    "subpixel": conv_transpose_subpixel,
    "hybrid": conv_transpose_hybrid,
}
CONV_FORMS = {"xla": xla_conv, "subpixel": conv_subpixel_grad}


def conv_transpose(x, kernel, stride: int, padding: int, impl: str = "cpu"):
  """PyTorch's ``conv_transpose2d`` in the form ``impl`` (``'cpu'`` or ``'xla'``)."""
  if impl == "xla":
    return xla_conv_transpose(x, kernel, stride, padding)
  if x.shape[1:3] == (1, 1) and padding == 0:
    return conv_transpose_dense(x, kernel, stride, padding)
  if stride == 2:
    return conv_transpose_hybrid(x, kernel, stride, padding)
  return conv_transpose_dilated(x, kernel, stride, padding)


def conv(x, kernel, stride: int, padding: int, impl: str = "cpu"):
  """PyTorch's ``conv2d`` (HWIO kernel) in the form ``impl``."""
  if impl == "cpu" and stride == 2:
    return conv_subpixel_grad(x, kernel, stride, padding)
  return xla_conv(x, kernel, stride, padding)
