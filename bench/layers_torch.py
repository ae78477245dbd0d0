#!/usr/bin/env python
"""The same per-layer timings as ``layers.py``, for PyTorch's own layers.

    /tmp/torch-ref/bin/python bench/layers_torch.py --batch 64

For every conv / transposed conv of the AnimeGAN nets (``layers.LAYERS``),
``torch.nn.Conv2d`` / ``ConvTranspose2d`` (NCHW, no bias): the forward, and the
forward + both gradients (``all``), best of ``--reps``, with GFLOP/s counted
as in ``layers.py`` (``all`` = 3x the forward's FLOPs). Runs in the torch
venv; imports nothing of the project but the layer table.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _best(fn, reps):
  fn()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return min(ts)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--threads", type=int, default=0, help="0 = os.cpu_count()")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--matmul", action="store_true",
                  help="also time a 2048x2048 matmul (fp32, bf16): the dense peak")
  args = ap.parse_args()

  import torch  # noqa: PLC0415
  from layers import LAYERS  # noqa: PLC0415

  torch.set_num_threads(args.threads or os.cpu_count())
  dtype = getattr(torch, args.dtype)
  if args.matmul:
    for dt in (torch.float32, torch.bfloat16):
      a = torch.randn(2048, 2048, dtype=dt)
      t = _best(lambda a=a: a @ a, args.reps)
      print(f"matmul {str(dt):15s} {1e3 * t:8.2f} ms {2 * 2048**3 / t / 1e9:7.1f} GFLOP/s")
  b = args.batch
  print(f"{'layer':10s} {'part':6s} {'ms':>8s} {'GFLOP/s':>8s}")
  for name, kind, hw, cin, cout, k, s, p in LAYERS:
    if kind == "T":
      layer = torch.nn.ConvTranspose2d(cin, cout, k, s, p, bias=False)
      flops = 2 * b * hw * hw * cin * cout * k * k
    else:
      layer = torch.nn.Conv2d(cin, cout, k, s, p, bias=False)
      out = (hw + 2 * p - k) // s + 1
      flops = 2 * b * out * out * cin * cout * k * k
    layer = layer.to(dtype)
    x = torch.randn(b, cin, hw, hw, dtype=dtype, requires_grad=True)
    w = torch.randn_like(layer(x))

    def fwd(layer=layer, x=x):
      with torch.no_grad():
        layer(x)

    def both(layer=layer, x=x, w=w):
      x.grad = layer.weight.grad = None
      (layer(x) * w).sum().backward()

    for part, fn, mult in (("fwd", fwd, 1), ("all", both, 3)):
      t = _best(fn, args.reps)
      print(f"{name:10s} {part:6s} {1e3 * t:8.2f} {mult * flops / t / 1e9:8.1f}", flush=True)


if __name__ == "__main__":
  main()
