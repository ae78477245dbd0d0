"""DiffAugment (Zhao et al. 2020): the same random, differentiable transforms of
every image D sees, real and fake, in both nets' steps.

Policies (``config.diffaugment``, comma-separated, in order), one draw per
image each: ``color`` (brightness +U(-0.5, 0.5), saturation x U(0, 2),
contrast x U(0.5, 1.5)), ``translation`` (up to 1/8 of the size, zero fill),
``cutout`` (a zeroed square of half the size). Each replica takes its rows of
the global batch's draws, so a run does not depend on the device count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse(policy: str) -> tuple[str, ...]:
  """``'color,translation'`` -> ('color', 'translation'); '' -> ()."""
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  unknown = [p for p in names if p not in POLICIES]
  if unknown:
    raise ValueError(f"config.diffaugment={policy!r}: unknown {unknown}; use a "
                     f"comma-separated subset of {POLICIES} (or '' for none).")
  return names


class _Draw:
  """This replica's rows of per-image draws made for the whole global batch."""

  def __init__(self, n: int, index, count: int):
    self.n, self.index, self.count = n, index, count

  def _rows(self, values):
    return jax.lax.dynamic_slice_in_dim(values, self.index * self.n, self.n)

  def uniform(self, key, dtype):
    return self._rows(jax.random.uniform(key, (self.n * self.count, 1, 1, 1), dtype))

  def randint(self, key, lo: int, hi: int):
    return self._rows(jax.random.randint(key, (self.n * self.count, 1), lo, hi))


def _color(key, x, draw: _Draw):
  b, s, c = jax.random.split(key, 3)
  x = x + (draw.uniform(b, x.dtype) - 0.5)
  mean = x.mean(axis=3, keepdims=True)
  x = (x - mean) * (draw.uniform(s, x.dtype) * 2) + mean
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (draw.uniform(c, x.dtype) + 0.5) + mean


def _shift_masks(key, draw: _Draw, size: int, span: int):
  """Per-image integer offsets in [-span, span] along one axis, and where pixels land."""
  offset = draw.randint(key, -span, span + 1)
  src = jnp.arange(size)[None, :] - offset  # the source row of each output row
  return src, (src >= 0) & (src < size)


def _translation(key, x, draw: _Draw, ratio: float = 0.125):
  _, h, w, _ = x.shape
  ky, kx = jax.random.split(key)
  rows, row_ok = _shift_masks(ky, draw, h, int(h * ratio + 0.5))
  cols, col_ok = _shift_masks(kx, draw, w, int(w * ratio + 0.5))
  # A gather per axis keeps the transform differentiable in x.
  x = jnp.take_along_axis(x, jnp.clip(rows, 0, h - 1)[:, :, None, None], axis=1)
  x = jnp.take_along_axis(x, jnp.clip(cols, 0, w - 1)[:, None, :, None], axis=2)
  keep = row_ok[:, :, None, None] & col_ok[:, None, :, None]
  return jnp.where(keep, x, jnp.zeros((), x.dtype))


def _cutout(key, x, draw: _Draw, ratio: float = 0.5):
  _, h, w, _ = x.shape

  def band(k, size):  # rows [c - cut/2, c - cut/2 + cut) for a centre c in [0, size]
    cut = int(size * ratio + 0.5)
    lo = draw.randint(k, 0, size + 1) - cut // 2
    pos = jnp.arange(size)[None, :]
    return (pos >= lo) & (pos < lo + cut)

  ky, kx = jax.random.split(key)
  inside = band(ky, h)[:, :, None, None] & band(kx, w)[:, None, :, None]
  return jnp.where(inside, jnp.zeros((), x.dtype), x)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def apply(key, x, policy: tuple[str, ...], index=0, count: int = 1):
  """``x`` augmented by ``policy`` (``parse``'s tuple), one draw per image per transform.

  Args:
    key: the draws' key (the same on every replica).
    x: (n, H, W, C) images in [-1, 1]: rows ``index * n`` to ``(index + 1) * n``
      of a global batch of ``count * n``.
    policy: the transforms, in order.
    index: this replica's place in the batch (``lax.axis_index``).
    count: replicas sharing the batch (``lax.axis_size``).
  """
  draw = _Draw(x.shape[0], index, count)
  for name, k in zip(policy, jax.random.split(key, max(1, len(policy))), strict=False):
    x = _TRANSFORMS[name](k, x, draw)
  return x
