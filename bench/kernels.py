#!/usr/bin/env python
"""What XLA:CPU's kernels reach here: the numbers behind "Why not 1.3x".

    python bench/kernels.py

With the project's XLA flags (``cpu_flags``), best of ``--reps``:

* ``matmul``: a 2048² matmul in fp32, and in bf16 with f32 accumulation
  (``preferred_element_type``): the machine's dense peak per dtype.
* ``conv``: D.conv2's convolution (batch 64, 16x16x128 -> 8x8x256, k4 s2) in
  fp32 and bf16: whether convolutions get the bf16 kernels too.
* ``im2col``: D.conv1 (batch 64, 32x32x64 -> 16x16x128, k4 s2) as patches +
  a bf16 matmul: the cost of building the patches (strided slices + concat),
  the matmul, and the kernel-gradient matmul (patchesᵀ · dy), against the
  layer as one convolution.

PyTorch's 2048² matmul: ``/tmp/torch-ref/bin/python bench/layers_torch.py --matmul``.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--reps", type=int, default=7)
  args = ap.parse_args()

  from dcgan_jax import cpu_flags  # noqa: PLC0415

  cpu_flags.use_fast_cpu_flags()

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jax import lax  # noqa: PLC0415

  def best_ms(fn, *xs):
    jax.block_until_ready(fn(*xs))
    ts = []
    for _ in range(args.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*xs))
      ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)

  f32, bf16 = jnp.float32, jnp.bfloat16
  key = jax.random.key(0)
  n = 2048
  for dt in (f32, bf16):
    a = jax.random.normal(key, (n, n)).astype(dt)
    mm = jax.jit(lambda a, b: lax.dot(a, b, preferred_element_type=f32))
    ms = best_ms(mm, a, a)
    print(f"matmul {jnp.dtype(dt).name:8s} {ms:8.2f} ms {2 * n**3 / ms / 1e6:7.1f} GFLOP/s")

  dims = ("NHWC", "HWIO", "NHWC")
  x = jax.random.normal(key, (64, 16, 16, 128))
  k = jax.random.normal(key, (4, 4, 128, 256))
  flops = 2 * 64 * 8 * 8 * 128 * 256 * 16
  for dt in (f32, bf16):
    conv = jax.jit(lambda x, k: lax.conv_general_dilated(
        x, k, (2, 2), [(1, 1)] * 2, dimension_numbers=dims, preferred_element_type=f32))
    ms = best_ms(conv, x.astype(dt), k.astype(dt))
    print(f"conv   {jnp.dtype(dt).name:8s} {ms:8.2f} ms {flops / ms / 1e6:7.1f} GFLOP/s "
          "(D.conv2, batch 64)")

  b, h, c, kk, s, o = 64, 32, 64, 4, 2, 128
  ho = h // s
  x = jax.random.normal(key, (b, h, h, c))
  w = jax.random.normal(key, (kk * kk * c, o))

  def patches(x):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate(
        [lax.slice(xp, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (ho - 1) + 1, c),
                   (1, s, s, 1)) for i in range(kk) for j in range(kk)], -1).astype(bf16)

  p = jax.jit(patches)(x)
  dy = jax.random.normal(key, (b, ho, ho, o)).astype(bf16)
  mm = jax.jit(lambda p, w: lax.dot_general(p, w, (((3,), (0,)), ((), ())),
                                            preferred_element_type=f32))
  dw = jax.jit(lambda p, g: lax.dot_general(p.reshape(-1, p.shape[-1]), g.reshape(-1, o),
                                            (((0,), (0,)), ((), ())),
                                            preferred_element_type=f32))
  conv = jax.jit(lambda x, k: lax.conv_general_dilated(x, k, (2, 2), [(1, 1)] * 2,
                                                       dimension_numbers=dims))
  print(f"im2col D.conv1 batch 64: patches ({p.size / 1e6:.1f} M values) "
        f"{best_ms(jax.jit(patches), x):.2f} ms, bf16 matmul {best_ms(mm, p, w.astype(bf16)):.2f}"
        f" ms, kernel-gradient matmul {best_ms(dw, p, dy):.2f} ms; as one fp32 conv "
        f"{best_ms(conv, x, w.reshape(kk, kk, c, o)):.2f} ms")


if __name__ == "__main__":
  main()
