#!/usr/bin/env python
"""How fast the FID Inception runs, layer by layer, and its formulations compared.

    python bench/fid_inception.py --batch 50 --reps 3 [--layers]

Times ``inception.features`` (what FID runs: resize 96 -> 299, the network,
pool3) on ``--batch`` uint8 faces with random stand-in weights, after
compiling, in img/s and GFLOP/s (multiply-add = 2), for the project's
``inception.conv_bn`` and for the reference formulation below (each conv at
HIGHEST precision, then BatchNorm, as the graph is written), and prints the
largest difference between their features: the bench for trying another
formulation of the convolutions. ``--layers`` also times every conv + BatchNorm + ReLU
on its own input shape in both forms (best of ``--reps``), the slowest first.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _time(fn, args, reps: int) -> float:
  import jax  # noqa: PLC0415
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def reference_conv_bn(p, x, stride, padding):
  """A conv + BatchNorm + ReLU as the graph has it, written out (``inception.conv_bn``
  is the form the project runs; edit it to try another)."""
  from jax import lax  # noqa: PLC0415

  from dcgan_jax.metrics import inception  # noqa: PLC0415
  y = lax.conv_general_dilated(x, p["kernel"], (stride,) * 2,
                               [(padding[0],) * 2, (padding[1],) * 2],
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               precision=lax.Precision.HIGHEST)
  return lax.max((y - p["mean"]) * (lax.rsqrt(p["var"] + inception.BN_EPS) * p["scale"])
                 + p["bias"], 0.0)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=50)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--layers", action="store_true", help="time every conv layer too")
  ap.add_argument("--top", type=int, default=15)
  args = ap.parse_args()

  from dcgan_jax import cpu_flags  # noqa: PLC0415
  cpu_flags.use_fast_cpu_flags()  # as main.py does
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from dcgan_jax.data import synthetic  # noqa: PLC0415
  from dcgan_jax.metrics import inception

  params = inception.init_params(0)
  faces = synthetic.make_faces(args.batch, 96, seed=7)
  # ~5.7 GFLOP per 299x299 image (multiply-add = 2), from the conv shapes.
  calls = inception.conv_calls(params, args.batch)
  gflop = sum(2 * np.prod(shapes[1][1:]) * np.prod(p["kernel"].shape[:3])
              for _, p, _, _, shapes in calls) / 1e9
  fast = _time(inception.features, (params, faces), args.reps)
  ref_fn = jax.jit(lambda p, x: inception.features_with(p, x, reference_conv_bn))
  ref = _time(ref_fn, (params, faces), args.reps)
  diff = float(np.abs(np.asarray(inception.features(params, faces))
                      - np.asarray(ref_fn(params, faces))).max())
  scale = float(np.abs(np.asarray(ref_fn(params, faces))).max())
  print(f"jax {jax.__version__} backend={jax.default_backend()} batch={args.batch} "
        f"gflop_per_image={gflop:.2f} convs={len(calls)}")
  for name, t in (("reference", ref), ("project", fast)):
    print(f"{name}_imgs_per_s={args.batch / t:.2f} gflops={gflop * args.batch / t:.1f}")
  print(f"speedup={ref / fast:.2f}")
  print(f"max_feature_diff={diff:.2e} (features up to {scale:.3g})")
  if not args.layers:
    return
  rows = []
  for name, p, stride, padding, shapes in calls:
    x = jax.random.normal(jax.random.key(0), shapes[0], np.float32)
    flops = 2 * np.prod(shapes[1]) * np.prod(p["kernel"].shape[:3])
    t_ref = _time(jax.jit(lambda p, x, s=stride, q=padding: reference_conv_bn(p, x, s, q)),
                  (p, x), args.reps)
    t_new = _time(jax.jit(lambda p, x, s=stride, q=padding: inception.conv_bn(p, x, s, q)),
                  (p, x), args.reps)
    rows.append((t_ref, t_new, name, flops))
  total_ref, total_new = sum(r[0] for r in rows), sum(r[1] for r in rows)
  print(f"convs: reference {1e3 * total_ref:.0f} ms, project {1e3 * total_new:.0f} ms "
        f"(whole net: {1e3 * ref:.0f} / {1e3 * fast:.0f} ms)")
  print(f"{'layer':40s} {'ref ms':>8s} {'new ms':>8s} {'ref GF/s':>9s} {'new GF/s':>9s}")
  for t_ref, t_new, name, flops in sorted(rows, reverse=True)[: args.top]:
    print(f"{name:40s} {1e3 * t_ref:8.2f} {1e3 * t_new:8.2f} {flops / t_ref / 1e9:9.1f} "
          f"{flops / t_new / 1e9:9.1f}")


if __name__ == "__main__":
  main()
