#!/usr/bin/env python
"""The training loop as main.py runs it, against its own step in isolation.

    python bench/train_loop.py --config anime --batch 64 --steps 60
    python bench/train_loop.py --config anime --batch 64 --ngf 8 --ndf 8 --steps 600
    python bench/train_loop.py --config demo --steps 1000 --rss-at 100,1000 --step-steps 0

Runs ``train.train_and_evaluate`` itself (a fresh workdir, the given config's
data; ``--dataset`` for a folder) with the config's periodic work scaled down
to the run (``loop_config``): scalars every ``--log-every`` steps, sample grids
every ``--plot-every``, checkpoints every ``--save-every`` (defaults: 10, 4 and
4 of them per run), so that every periodic action runs more than once. At each
logged step it records the time, the peak RSS so far, the live JAX arrays and
the backend compilations so far. The loop's img/s is the steady state: images
from the first logged step after ``--warmup-steps`` (default: once every
periodic action has run once) to the last, over that time, periodic work
included. Then, in the same process, it times the
isolated step (``common.time_step``: the same config, a fixed batch already on
the devices) for ``--step-steps`` steps. One ``key=value`` line each; the last
line is ``loop_efficiency=<loop img/s / step img/s>`` (with ``--rounds R``, the
loop and the step alternate R times and it is the median of their ratios).
"""

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="anime", help="configs/<name>.py")
  ap.add_argument("--dataset", default=None, help="a folder (default: the config's, "
                  "or 'synthetic' when that folder is absent)")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--ngf", type=int, default=None)
  ap.add_argument("--ndf", type=int, default=None)
  ap.add_argument("--dtype", default=None)
  ap.add_argument("--parallel", default=None, help="pmap | shard_map")
  ap.add_argument("--input-on-device", action="store_true")
  ap.add_argument("--steps-per-call", type=int, default=None)
  ap.add_argument("--steps", type=int, default=60, help="training steps of the loop")
  ap.add_argument("--warmup-steps", type=int, default=None,
                  help="steps before the steady state (default: the first round of "
                  "periodic work)")
  ap.add_argument("--log-every", type=int, default=None)
  ap.add_argument("--plot-every", type=int, default=None)
  ap.add_argument("--save-every", type=int, default=None)
  ap.add_argument("--rss-at", default="", help="steps to report peak RSS at, e.g. 100,1000")
  ap.add_argument("--step-steps", type=int, default=20,
                  help="timed steps of the isolated step (0: skip it)")
  ap.add_argument("--step-warmup", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=1,
                  help="loop and isolated step measured alternately this many times; the "
                  "efficiency is their median ratio")
  return ap.parse_args()


class _Recorder:
  """Wraps the run's metric writer: one record per logged step."""

  def __init__(self, compiles: list):
    self.rows: list[dict] = []
    self._compiles = compiles
    self._overhead = 0.0  # the recorder's own time, kept out of the loop's

  def wrap(self, writer):
    import jax  # noqa: PLC0415
    write = writer.write_scalars

    def write_scalars(step, scalars):
      if "loss_d" in scalars:
        t = time.perf_counter()
        gc.collect()
        self.rows.append({
            "step": int(step), "t": t - self._overhead,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "live": len(jax.live_arrays()), "compiles": len(self._compiles)})
        self._overhead += time.perf_counter() - t
      return write(step, scalars)
    writer.write_scalars = write_scalars
    return writer


def loop_config(name: str, steps: int, *, synthetic_if_missing: bool = True, **overrides):
  """configs/<name>.py for a loop of ``steps`` with its periodic work scaled down.

  ``log_every``, ``plot_every`` and ``save_every_steps`` default to 10, 4 and 4
  rounds per run (multiples of ``steps_per_call``); FID is off. Overrides of
  None are skipped. A dataset folder that does not exist becomes 'synthetic'
  (the speed benches on a fresh clone), or with ``synthetic_if_missing=False``
  stops the run naming it (a quality study must not score the wrong faces).
  """
  from bench import common  # noqa: PLC0415
  from dcgan_jax.data import input_pipeline  # noqa: PLC0415
  k = overrides.get("steps_per_call") or 1
  every = lambda rounds: max(k, steps // rounds // k * k)
  config = common.get_config(name, num_train_steps=steps, log_every=every(10),
                             plot_every=every(4), save_every_steps=every(4))
  for key, v in overrides.items():
    if v is not None:
      config[key] = v
  config.fid.eval_every = 0
  if input_pipeline.source(config.dataset) == "folder" and not os.path.isdir(config.dataset):
    if not synthetic_if_missing:
      sys.exit(f"--dataset {os.path.abspath(config.dataset)}: no such folder (give the "
               "faces' folder, or 'synthetic' to study the generated faces)")
    config.dataset = "synthetic"
  return config


def measure(config, warmup_steps: int | None = None, workdir: str | None = None) -> dict:
  """Runs ``train.train_and_evaluate(config)`` and records it.

  ``workdir`` keeps the run (default: a temporary folder, removed after).

  Returns:
    {'imgs_per_s': steady-state img/s from the first logged step after
     ``warmup_steps`` (default: once every periodic action has run once) to
     the last, 'wall_s',
     'steady': (first, last) step, 'compiles_after_warmup', 'compiles',
     'live': (first, last) live arrays, 'rows': the per-log records}.
  """
  from clu import metric_writers  # noqa: PLC0415
  from jax import monitoring  # noqa: PLC0415

  from dcgan_jax import train  # noqa: PLC0415

  compiles: list = []
  monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compiles.append(secs) if "backend_compile" in name else None)
  rec = _Recorder(compiles)
  create = metric_writers.create_default_writer
  metric_writers.create_default_writer = lambda *a, **kw: rec.wrap(create(*a, **kw))
  t0 = time.perf_counter()
  try:
    if workdir is None:
      with tempfile.TemporaryDirectory() as tmp:
        train.train_and_evaluate(config, tmp)
    else:
      train.train_and_evaluate(config, workdir)
  finally:
    metric_writers.create_default_writer = create
  wall = time.perf_counter() - t0
  if warmup_steps is None:
    warmup_steps = max(config.log_every, config.plot_every, config.save_every_steps)
  steady = [r for r in rec.rows if r["step"] > warmup_steps]
  if len(steady) < 2:  # a run too short for a steady state: all its logged steps
    steady = rec.rows
  first, last = steady[0], steady[-1]
  return {"imgs_per_s": (last["step"] - first["step"]) * config.batch_size
          / (last["t"] - first["t"]), "wall_s": wall, "steady": (first["step"], last["step"]),
          "compiles_after_warmup": last["compiles"] - first["compiles"],
          "compiles": len(compiles), "live": (first["live"], last["live"]), "rows": rec.rows}


def main():
  args = _parse()
  from bench import common  # noqa: PLC0415
  from dcgan_jax import cpu_flags  # noqa: PLC0415
  cpu_flags.use_fast_cpu_flags()  # as main.py does

  import jax  # noqa: PLC0415

  config = loop_config(
      args.config, args.steps, batch_size=args.batch, ngf=args.ngf, ndf=args.ndf,
      dtype=args.dtype, parallel=args.parallel, dataset=args.dataset,
      steps_per_call=args.steps_per_call, log_every=args.log_every,
      plot_every=args.plot_every, save_every_steps=args.save_every,
      input_on_device=True if args.input_on_device else None)
  print(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.device_count()} "
        f"config={args.config} dataset={config.dataset} batch={config.batch_size} "
        f"ngf={config.ngf} ndf={config.ndf} dtype={config.dtype} parallel={config.parallel} "
        f"input_on_device={config.input_on_device} "
        f"steps_per_call={config.get('steps_per_call', 1)} "
        f"steps={args.steps} log/plot/save every {config.log_every}/{config.plot_every}/"
        f"{config.save_every_steps}", flush=True)
  ratios = []
  for i in range(args.rounds):
    r = measure(config, args.warmup_steps)
    tag = f" (round {i + 1} of {args.rounds})" if args.rounds > 1 else ""
    print(f"loop_wall_s={r['wall_s']:.1f} (start-up and compilation included){tag}")
    print(f"loop_steady_steps={r['steady'][0]}..{r['steady'][1]}")
    print(f"loop_compiles_after_warmup={r['compiles_after_warmup']} (total {r['compiles']})")
    print(f"loop_live_arrays={r['live'][0]}..{r['live'][1]} (at steps {r['steady'][0]} and "
          f"{r['steady'][1]})")
    for s in [int(x) for x in args.rss_at.split(",") if x]:
      at = [row for row in r["rows"] if row["step"] >= s]
      print(f"peak_rss_mb_at_step_{s}=" + (f"{at[0]['rss_mb']:.0f}" if at else "n/a"))
    print(f"loop_imgs_per_s={r['imgs_per_s']:.2f}", flush=True)
    if not args.step_steps:
      continue
    k = config.get("steps_per_call", 1)
    calls = max(1, args.step_steps // k)
    step = common.time_step(config, calls, args.step_warmup)
    print(f"step_imgs_per_s={step['imgs_per_s']:.2f} (isolated, {calls} calls of {k})",
          flush=True)
    ratios.append(r["imgs_per_s"] / step["imgs_per_s"])
  if ratios:
    print(f"loop_efficiency={statistics.median(ratios):.3f}"
          + (f" (median of {', '.join(f'{x:.3f}' for x in ratios)})" if len(ratios) > 1
             else ""))

if __name__ == "__main__":
  main()
