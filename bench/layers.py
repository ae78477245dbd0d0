#!/usr/bin/env python
"""Per-layer microbenchmarks: forward, input gradient and kernel gradient of
every convolution of G and D, for each transposed-conv formulation.

    python bench/layers.py --batch 64 --reps 5

Prints one row per (layer, formulation, part) with milliseconds (best of
``--reps``) and GFLOP/s, so the slow piece of the step shows directly.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, kind, in_hw, cin, cout, k, s, p): G's convT layers and D's convs.
LAYERS = [
    ("G.convt0", "T", 1, 100, 512, 4, 1, 0),
    ("G.convt1", "T", 4, 512, 256, 4, 2, 1),
    ("G.convt2", "T", 8, 256, 128, 4, 2, 1),
    ("G.convt3", "T", 16, 128, 64, 4, 2, 1),
    ("G.convt4", "T", 32, 64, 3, 5, 3, 1),
    ("D.conv0", "C", 96, 3, 64, 5, 3, 1),
    ("D.conv1", "C", 32, 64, 128, 4, 2, 1),
    ("D.conv2", "C", 16, 128, 256, 4, 2, 1),
    ("D.conv3", "C", 8, 256, 512, 4, 2, 1),
    ("D.conv4", "C", 4, 512, 1, 4, 1, 0),
]


def _time(fn, args, reps):
  import jax  # noqa: PLC0415
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return min(ts)  # the least disturbed run: these machines are shared


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--only", default="", help="substring filter on layer names")
  ap.add_argument("--impls", default="", help="comma list of implementations")
  ap.add_argument("--parts", default="fwd,dx,dw,all")
  args = ap.parse_args()

  from dcgan_jax import cpu_flags  # noqa: PLC0415

  cpu_flags.use_fast_cpu_flags()  # as main.py does, before JAX starts

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dcgan_jax import models  # noqa: PLC0415

  forms = models.CONV_TRANSPOSE_IMPLS
  conv_forms = models.CONV_IMPLS
  b = args.batch
  print(f"{'layer':10s} {'impl':10s} {'part':6s} {'ms':>8s} {'GFLOP/s':>8s}")
  for name, kind, hw, cin, cout, k, s, p in LAYERS:
    if args.only not in name:
      continue
    key = jax.random.key(0)
    if kind == "T":
      x = jax.random.normal(key, (b, hw, hw, cin))
      kern = jax.random.normal(key, (k, k, cout, cin)) * 0.02
      out_hw = (hw - 1) * s - 2 * p + k
      flops = 2 * b * hw * hw * cin * cout * k * k
      impls = dict(forms)
      if hw == 1 and p == 0:
        impls["dense"] = models.conv_transpose_dense
    else:
      x = jax.random.normal(key, (b, hw, hw, cin))
      kern = jax.random.normal(key, (k, k, cin, cout)) * 0.02
      out_hw = (hw + 2 * p - k) // s + 1
      flops = 2 * b * out_hw * out_hw * cin * cout * k * k
      impls = conv_forms
    w = jax.random.normal(key, (b, out_hw, out_hw, cout))
    for impl_name, impl in impls.items():
      if args.impls and impl_name not in args.impls.split(","):
        continue
      f = jax.jit(lambda x, kern, impl=impl, s=s, p=p: impl(x, kern, s, p))
      loss = lambda x, kern, impl=impl, s=s, p=p, w=w: jnp.vdot(impl(x, kern, s, p), w)
      dx = jax.jit(jax.grad(loss, 0))
      dw = jax.jit(jax.grad(loss, 1))
      both = jax.jit(jax.value_and_grad(loss, (0, 1)))
      for part, fn, mult in (("fwd", f, 1), ("dx", dx, 2), ("dw", dw, 2),
                             ("all", both, 3)):
        if part not in args.parts.split(","):
          continue
        t = _time(fn, (x, kern), args.reps)
        # dx/dw timings include the forward XLA may keep; GFLOP/s counts
        # forward + the one gradient (mult) for a like-for-like rate.
        print(f"{name:10s} {impl_name:10s} {part:6s} {1e3 * t:8.2f} "
              f"{mult * flops / t / 1e9:8.1f}", flush=True)


if __name__ == "__main__":
  main()
