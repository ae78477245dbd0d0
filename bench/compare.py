#!/usr/bin/env python
"""Alternates the project's step and the PyTorch reference, several rounds.

    python bench/compare.py --batch 64 --rounds 3 --steps 10 --warmup 2

Each round runs ``bench/train_step.py`` then ``../shared/bench/torch_ref.py``
(with ``--torch-python``, default /tmp/torch-ref/bin/python) as subprocesses
with the same batch/steps/warmup, so both see the same machine load; prints
each round's img/s and the ratio, then the median ratio (the number to
quote on a shared machine). Extra XLA flags go in ``--xla-flags``.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _imgs_per_s(cmd, env=None) -> float:
  out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                       cwd=ROOT)
  m = re.search(r"imgs_per_s=([0-9.]+)\s*$", out.stdout)
  if out.returncode or not m:
    raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n"
                       f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
  return float(m.group(1))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--torch-python", default="/tmp/torch-ref/bin/python")
  ap.add_argument("--torch-ref", default=os.path.join(ROOT, "..", "shared", "bench",
                                                      "torch_ref.py"))
  ap.add_argument("--xla-flags", default=None,
                  help="XLA_FLAGS for the project's step (default: inherited)")
  ap.add_argument("--jax-args", default="", help="extra args for train_step.py")
  args = ap.parse_args()
  if not os.path.exists(args.torch_python):
    sys.exit(f"{args.torch_python} not found: python3 -m venv /tmp/torch-ref && "
             "/tmp/torch-ref/bin/pip install torch==2.13.0 numpy")

  common = ["--batch", str(args.batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup)]
  env = dict(os.environ)
  if args.xla_flags is not None:
    env["XLA_FLAGS"] = args.xla_flags
  jax_cmd = [sys.executable, os.path.join(HERE, "train_step.py"), *common,
             *args.jax_args.split()]
  torch_cmd = [args.torch_python, args.torch_ref, *common]
  ratios = []
  print(f"batch={args.batch} steps={args.steps} warmup={args.warmup} "
        f"XLA_FLAGS={env.get('XLA_FLAGS', '')!r} (+ cpu_flags defaults) {args.jax_args}",
        flush=True)
  for r in range(args.rounds):
    j = _imgs_per_s(jax_cmd, env)
    t = _imgs_per_s(torch_cmd)
    ratios.append(j / t)
    print(f"round {r}: jax {j:.2f} img/s  torch {t:.2f} img/s  ratio {j / t:.3f}",
          flush=True)
  print(f"median_ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
  main()
