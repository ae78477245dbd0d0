#!/usr/bin/env python
"""Forms of the compiled training call on this backend: straight, scanned, conditional.

    python bench/call_forms.py --ngf 16 --ndf 16 --batch 64

Times ``train.train_step`` mapped by the pmap runner in each form, on a fixed batch
on the device (``--calls`` timed calls after one compiling call): ``straight`` (one
step, D's and G's turns fixed), ``scan`` and ``scan_unrolled`` (``lax.scan`` of one
step), ``cond`` (one step, G's turn a traced ``lax.cond`` as with ``g_every=2``),
``unrolled4`` (four steps unrolled in Python), and ``make_train_call`` (what
``main.py`` runs). One ``form img/s=N`` line each.
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--ngf", type=int, default=16)
  ap.add_argument("--ndf", type=int, default=16)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--calls", type=int, default=5)
  ap.add_argument("--forms", default="straight,scan,scan_unrolled,cond,unrolled4,"
                  "make_train_call")
  args = ap.parse_args()
  from dcgan_jax import cpu_flags  # noqa: PLC0415
  cpu_flags.use_fast_cpu_flags()
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax import lax  # noqa: PLC0415

  from bench import common  # noqa: PLC0415
  from dcgan_jax import parallel, summaries, train  # noqa: PLC0415
  from dcgan_jax.state import create_train_state, make_models  # noqa: PLC0415

  config = common.get_config("anime", ngf=args.ngf, ndf=args.ndf, batch_size=args.batch)
  runner = parallel.make_runner("pmap")
  generator, discriminator = make_models(config, parallel.AXIS)
  step = functools.partial(train.train_step, generator=generator,
                           discriminator=discriminator, nz=config.nz)

  def one(carry, rows, do_g=True):
    state, summary = carry
    state, m = step(state, rows, True, do_g)
    return state, summaries.accumulate(summary, state.step, m, True, do_g)

  def form(name):
    def fn(state, summary, batch, images):
      carry = (state, summary)
      if name in ("scan", "scan_unrolled"):
        return lax.scan(lambda c, rows: (one(c, rows), None), carry, batch,
                        unroll=name == "scan_unrolled")[0]
      if name == "cond":
        return one(carry, batch[0], state.step % 2 == 0)
      for i in range(batch.shape[0]):
        carry = one(carry, batch[i])
      return carry
    return fn

  for name in args.forms.split(","):
    if name == "make_train_call":
      compiled = train.make_train_call(config, runner)
    else:
      mapped = runner.compile(form(name), ("replicated", "replicated", "batch", "copies"))
      compiled = lambda s, su, b, i, step, mapped=mapped: mapped(s, su, b, i)  # noqa: E731
    k = 4 if name == "unrolled4" else 1
    empty = runner.put_state(summaries.empty("bce"))
    state = runner.put_state(create_train_state(config, jax.random.PRNGKey(0)))
    batch = runner.put_batch(np.random.default_rng(0).uniform(
        -1, 1, (k, args.batch, 96, 96, 3)).astype(np.float32))
    state, _ = compiled(state, empty, batch, None, 0)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(args.calls):
      state, _ = compiled(state, empty, batch, None, 0)
    jax.block_until_ready(state)
    print(f"{name} img/s={args.calls * k * args.batch / (time.perf_counter() - t):.1f}",
          flush=True)


if __name__ == "__main__":
  main()
