#!/usr/bin/env python
"""Times the project's own jitted train step on a fixed device batch.

Builds exactly what ``train.train_and_evaluate`` runs: ``create_train_state``,
``make_models`` with the BatchNorm axis, and
``parallel.pmap_step(functools.partial(train.train_step, ...))`` over all
local devices (state donated). One iteration is a D step + a G step, the
PyTorch reference's iteration. The batch is a fixed random batch already on
the device, so only the step is timed (after compilation, with
``block_until_ready``).

    python bench/train_step.py --batch 64 --steps 20 --warmup 2

Last line: ``imgs_per_s=<value>``.
"""

import argparse
import os
import sys
import time

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
  import numpy as np  # noqa: PLC0415

  from bench import common  # noqa: PLC0415
  from dcgan_jax import parallel  # noqa: PLC0415

  config = common.get_config(args.config, batch_size=args.batch, dtype=args.dtype,
                             ngf=args.ngf, ndf=args.ndf)
  pstate, p_step = common.build_step(config)
  s = config.image_size
  host = np.random.default_rng(0).uniform(-1, 1, (args.batch, s, s, 3)).astype(np.float32)
  batch = jax.pmap(lambda x: x)(parallel.shard(host))

  t0 = time.perf_counter()
  pstate, out = p_step(pstate, batch, True, True)
  jax.block_until_ready((pstate, out))
  t_compile = time.perf_counter() - t0
  for _ in range(args.warmup):
    pstate, out = p_step(pstate, batch, True, True)
  jax.block_until_ready((pstate, out))

  t0 = time.perf_counter()
  for _ in range(args.steps):
    pstate, out = p_step(pstate, batch, True, True)
  jax.block_until_ready((pstate, out))
  dt = time.perf_counter() - t0
  # A step that recompiled would show here; pmap caches per static args.
  sizes = p_step._cache_size() if hasattr(p_step, "_cache_size") else "n/a"
  m = parallel.unreplicate(out)
  print(f"jax {jax.__version__} devices={jax.local_device_count()} batch={args.batch} "
        f"steps={args.steps} warmup={args.warmup} dtype={config.dtype} "
        f"first_call_s={t_compile:.1f} compiled_variants={sizes}")
  print(f"lossD={float(m['d'].compute()['loss_d']):.4f} "
        f"lossG={float(m['g'].compute()['loss_g']):.4f}")
  print(f"ms_per_step={1000 * dt / args.steps:.2f}")
  print(f"imgs_per_s={args.batch * args.steps / dt:.2f}")


if __name__ == "__main__":
  main()
