#!/usr/bin/env python
"""fp32 vs bfloat16 compute: loss curves of the same run, and the speed of each.

    python bench/bf16_curves.py --steps 300 --every 25

Trains the demo config (procedural faces; ``--width`` nets, ``--batch``) from
the same initial state and the same batches once per dtype with the
project's step (bench/common.build_step), and prints the windowed mean of
each loss every ``--every`` steps side by side, then the largest gap between
the two curves and the img/s of each dtype (after compilation).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(dtype: str, args):
  import numpy as np  # noqa: PLC0415

  from bench import common  # noqa: PLC0415
  from dcgan_jax import summaries  # noqa: PLC0415
  from dcgan_jax.data import input_pipeline

  config = common.get_config("demo", dtype=dtype, ngf=args.width, ndf=args.width,
                             batch_size=args.batch)
  state, step_fn = common.build_step(config)
  runner = step_fn.runner
  inp = input_pipeline.create_input(config, process_index=0, process_count=1)
  losses, t0 = [], None
  for step, batch in zip(range(args.steps), inp.batches, strict=False):
    state, summary = step_fn.call(state, step_fn.empty, runner.put_batch(batch[None]), None, step)
    m = summaries.host_scalars(runner.get(summary))
    losses.append((m["loss_d"], m["loss_g"]))
    if step == 0:
      t0 = time.perf_counter()
  dt = time.perf_counter() - t0
  return np.array(losses), (args.steps - 1) * args.batch / dt


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--every", type=int, default=25)
  ap.add_argument("--width", type=int, default=16, help="ngf = ndf")
  ap.add_argument("--batch", type=int, default=32)
  args = ap.parse_args()
  import numpy as np  # noqa: PLC0415

  curves, speed = {}, {}
  for dtype in ("float32", "bfloat16"):
    curves[dtype], speed[dtype] = run(dtype, args)
  n = args.steps // args.every
  w = {k: v[: n * args.every].reshape(n, args.every, 2).mean(1) for k, v in curves.items()}
  print(f"{'steps':>9s} {'lossD f32':>10s} {'lossD bf16':>10s} {'lossG f32':>10s} "
        f"{'lossG bf16':>10s}")
  for i in range(n):
    a, b = w["float32"][i], w["bfloat16"][i]
    print(f"{i * args.every:4d}-{(i + 1) * args.every - 1:4d} {a[0]:10.4f} {b[0]:10.4f} "
          f"{a[1]:10.4f} {b[1]:10.4f}")
  gap = np.abs(w["float32"] - w["bfloat16"]).max(0)
  print(f"max_window_gap lossD={gap[0]:.4f} lossG={gap[1]:.4f}")
  for k, v in speed.items():
    print(f"{k}_imgs_per_s={v:.1f}")


if __name__ == "__main__":
  main()
