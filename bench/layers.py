#!/usr/bin/env python
"""Per-layer microbenchmarks: forward, input gradient and kernel gradient of
every convolution of G and D, for each formulation in ``dcgan_jax/conv_ops.py``.

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


def time_layers(batch: int, reps: int = 5, only: str = "", impls: str = "",
                parts=("fwd", "dx", "dw", "all"), dtype: str = "float32"):
  """Yields (layer, formulation, part, seconds, GFLOP/s) for every layer and form.

  ``part`` is fwd, dx (input gradient), dw (kernel gradient) or all (forward
  plus both gradients); the time is the best of ``reps``.
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dcgan_jax import conv_ops  # noqa: PLC0415

  dt = jnp.dtype(dtype)
  b = batch
  for name, kind, hw, cin, cout, k, s, p in LAYERS:
    if only not in name:
      continue
    key = jax.random.key(0)
    x = jax.random.normal(key, (b, hw, hw, cin), dt)
    if kind == "T":
      kern = (jax.random.normal(key, (k, k, cout, cin)) * 0.02).astype(dt)
      out_hw = (hw - 1) * s - 2 * p + k
      flops = 2 * b * hw * hw * cin * cout * k * k
      forms = dict(conv_ops.CONV_TRANSPOSE_FORMS)
      if hw == 1 and p == 0:
        forms["dense"] = conv_ops.conv_transpose_dense
      if out_hw % s:
        forms = {n: f for n, f in forms.items() if n not in ("subpixel", "hybrid")}
    else:
      kern = (jax.random.normal(key, (k, k, cin, cout)) * 0.02).astype(dt)
      out_hw = (hw + 2 * p - k) // s + 1
      flops = 2 * b * out_hw * out_hw * cin * cout * k * k
      forms = conv_ops.CONV_FORMS
    w = jax.random.normal(key, (b, out_hw, out_hw, cout), dt)
    for form_name, form in forms.items():
      if impls and form_name not in impls.split(","):
        continue
      f = jax.jit(lambda x, kern, form=form, s=s, p=p: form(x, kern, s, p))
      loss = lambda x, kern, form=form, s=s, p=p, w=w: jnp.vdot(form(x, kern, s, p), w)
      fns = {"fwd": (f, 1), "dx": (jax.jit(jax.grad(loss, 0)), 2),
             "dw": (jax.jit(jax.grad(loss, 1)), 2),
             "all": (jax.jit(jax.value_and_grad(loss, (0, 1))), 3)}
      for part in parts:
        fn, mult = fns[part]
        t = _time(fn, (x, kern), reps)
        # dx/dw timings include the forward XLA may keep; GFLOP/s counts
        # forward + the one gradient (mult) for a like-for-like rate.
        yield name, form_name, part, t, mult * flops / t / 1e9


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--only", default="", help="substring filter on layer names")
  ap.add_argument("--impls", default="", help="comma list of formulations")
  ap.add_argument("--parts", default="fwd,dx,dw,all")
  ap.add_argument("--dtype", default="float32")
  args = ap.parse_args()

  from dcgan_jax import cpu_flags  # noqa: PLC0415

  cpu_flags.use_fast_cpu_flags()  # as main.py does, before JAX starts
  print(f"{'layer':10s} {'impl':10s} {'part':6s} {'ms':>8s} {'GFLOP/s':>8s}")
  for name, form, part, t, gflops in time_layers(args.batch, args.reps, args.only, args.impls,
                                                 args.parts.split(","), args.dtype):
    print(f"{name:10s} {form:10s} {part:6s} {1e3 * t:8.2f} {gflops:8.1f}", flush=True)


if __name__ == "__main__":
  main()
