"""Train-step time at a fixed global batch, on however many devices JAX sees.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python bench/dist_step_time.py --parallel=pmap --batch=64 --width=32

Forced host devices split the same CPU cores, so on CPU this measures the
overhead of the data-parallel wrappers (collectives, smaller per-device
convolutions), not a speed-up.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import common  # noqa: E402
from dcgan_jax import parallel  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--parallel", default="pmap", choices=parallel.WRAPPERS)
  ap.add_argument("--batch", type=int, default=64, help="global batch")
  ap.add_argument("--width", type=int, default=32, help="ngf = ndf")
  ap.add_argument("--steps", type=int, default=5, help="timed steps (after a warm-up)")
  args = ap.parse_args()
  config = common.get_config("demo", batch_size=args.batch, ngf=args.width,
                             ndf=args.width, parallel=args.parallel)
  s, step = common.build_step(config)
  dev_batch = step.runner.put_batch(common.random_batch(config))
  s, _ = step.call(s, step.empty, dev_batch, None, 0)  # compiles
  jax.block_until_ready(s)
  t, c = time.perf_counter(), time.process_time()
  for _ in range(args.steps):
    s, _ = step.call(s, step.empty, dev_batch, None, 0)
  jax.block_until_ready(s)
  dt = (time.perf_counter() - t) / args.steps
  # CPU seconds per step (all threads): comparable even on a shared machine.
  cpu = (time.process_time() - c) / args.steps
  print(f"{args.parallel} devices={jax.device_count()} global_batch={args.batch} "
        f"width={args.width}: {dt * 1e3:.0f} ms/step wall, {cpu:.2f} CPU s/step, "
        f"{args.batch / dt:.1f} img/s")


if __name__ == "__main__":
  main()
