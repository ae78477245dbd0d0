#!/usr/bin/env python
"""Where the step's time goes: a jax.profiler trace of the project's step, summed.

    python bench/profile_step.py --batch 64 --steps 3

Traces ``--steps`` compiled steps (``common.build_step``, as ``train.py`` runs
them) with XLA:CPU's per-op trace events on, then sums the events by kind of
HLO op, read from the compiled HLO: elementwise/transpose/reduce/copy fusions,
dots, convolutions XLA emits itself. oneDNN convolutions (the custom calls the
``cpu_flags`` turn on) emit no trace event, so they are reported as the step's
wall time not covered by any traced op ("conv (untraced)"). With two threads,
traced ops can overlap: "busy" is the union of their intervals.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_INSTR = re.compile(r"\s+(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(")


def _op_kinds(hlo: str) -> dict[str, str]:
  """HLO instruction name -> conv | dot | reduce | transpose | copy | elementwise."""
  bodies, current = {}, None
  for line in hlo.splitlines():
    if not line.startswith(" ") and line.rstrip().endswith("{") and "(" in line:
      current = line.split()[0].lstrip("%")
      bodies[current] = []
    elif current and line.startswith("  "):
      bodies[current].append(line)
  kinds = {}
  for line in hlo.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, _, op = m.groups()
    calls = re.search(r"calls=%([\w.-]+)", line)
    body = "\n".join(bodies.get(calls.group(1), [])) if calls else f" {op}("
    kind = next((k for k, pat in (("conv", " convolution("), ("dot", " dot("),
                                  ("reduce", " reduce(")) if pat in body), None)
    if kind is None:
      kind = ("transpose" if "transpose" in name or " transpose(" in body or "gather" in name
              else "copy" if op == "copy" else "elementwise")
    kinds[name] = kind
  return kinds


def _union_us(intervals) -> float:
  total, end, start = 0.0, None, None
  for s, e in sorted(intervals):
    if end is None or s > end:
      total += 0 if end is None else end - start
      start, end = s, e
    else:
      end = max(end, e)
  return total + (0 if end is None else end - start)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--top", type=int, default=12, help="slowest traced fusions listed")
  args = ap.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_cpu_enable_xprof_traceme=true").strip()

  import jax  # noqa: PLC0415

  from bench import common  # noqa: PLC0415

  config = common.get_config("anime", batch_size=args.batch)
  state, step = common.build_step(config)
  batch = step.runner.put_batch(common.random_batch(config))
  for _ in range(2):
    state, _ = step.call(state, step.empty, batch, None, 0)
  jax.block_until_ready(state)
  (program,) = step.call.programs.values()
  kinds = _op_kinds(program.lower(state, step.empty, batch, None)
                    .compile().as_text())

  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(args.steps):
        state, _ = step.call(state, step.empty, batch, None, 0)
      jax.block_until_ready(state)
    trace = json.load(gzip.open(glob.glob(f"{tmp}/plugins/profile/*/*.trace.json.gz")[0]))
  events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
  wall = sum(e["dur"] for e in events
             if e["name"] == "ThunkExecutor::Execute (wait for completion)")
  ops = [e for e in events if e["name"] in kinds]
  busy = _union_us((e["ts"], e["ts"] + e["dur"]) for e in ops)
  by_kind, by_op = collections.Counter(), collections.Counter()
  for e in ops:
    by_kind[kinds[e["name"]]] += e["dur"]
    by_op[e["name"]] += e["dur"]
  n = args.steps
  print(f"batch={args.batch} steps={n} wall_ms_per_step={wall / 1e3 / n:.1f} "
        f"({args.batch * n / (wall / 1e6):.1f} img/s, tracing on)")
  print(f"  {'conv (untraced)':16s} {(wall - busy) / 1e3 / n:8.1f} ms  "
        f"{100 * (wall - busy) / wall:5.1f}%")
  traced = sum(by_kind.values())
  for kind, us in by_kind.most_common():
    share = us / traced * busy  # overlapping ops: scale op time to busy time
    print(f"  {kind:16s} {share / 1e3 / n:8.1f} ms  {100 * share / wall:5.1f}%")
  print(f"slowest traced ops (op time, ms/step; of {len(by_op)}):")
  for name, us in by_op.most_common(args.top):
    print(f"  {us / 1e3 / n:7.2f}  {kinds[name]:11s} {name}")


if __name__ == "__main__":
  main()
