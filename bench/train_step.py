#!/usr/bin/env python
"""Times the project's own jitted train step on a fixed device batch.

Builds exactly what ``train.train_and_evaluate`` runs (``common.build_step``:
``create_train_state`` and ``train.make_train_call``, the step mapped over all local
devices with the state donated). One iteration is a D step + a G step, the
PyTorch reference's iteration. The batch is a fixed random batch already on
the device, so only the step is timed (after compilation, with
``block_until_ready``).

    python bench/train_step.py --batch 64 --steps 20 --warmup 2

Last line: ``imgs_per_s=<value>``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=64, help="global batch")
  ap.add_argument("--steps", type=int, default=10, help="timed iterations")
  ap.add_argument("--warmup", type=int, default=2,
                  help="untimed iterations after the compiling one")
  ap.add_argument("--config", default="anime", help="configs/<name>.py")
  ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: config)")
  ap.add_argument("--ngf", type=int, default=None)
  ap.add_argument("--ndf", type=int, default=None)
  args = ap.parse_args()

  import jax  # noqa: PLC0415

  from bench import common  # noqa: PLC0415

  config = common.get_config(args.config, batch_size=args.batch, dtype=args.dtype,
                             ngf=args.ngf, ndf=args.ndf)
  r = common.time_step(config, args.steps, args.warmup)
  print(f"jax {jax.__version__} devices={jax.local_device_count()} batch={args.batch} "
        f"steps={args.steps} warmup={args.warmup} dtype={config.dtype} "
        f"first_call_s={r['first_call_s']:.1f}")
  print(f"lossD={r['loss_d']:.4f} lossG={r['loss_g']:.4f}")
  print(f"page_faults_per_step={r['page_faults_per_step']:.0f} "
        f"sys_s_per_step={r['sys_s_per_step']:.3f}")
  print(f"ms_per_step={r['ms_per_step']:.2f}")
  print(f"imgs_per_s={r['imgs_per_s']:.2f}")


if __name__ == "__main__":
  main()
