#!/usr/bin/env python
"""Images per second of each input path, to compare with the step's img/s.

    python bench/input_pipeline.py --dataset ../shared/data/anime-faces-96/face \
        --batch 256 --batches 20

Paths: ``memory`` (the default ``cache=True``: decode the folder once, then
numpy gathers float32 batches), ``stream`` (``cache=False``: tf.data decodes
every batch from disk), ``synthetic`` (procedural faces, in memory),
``device`` (``input_on_device``: the decoded uint8 set on the device, batches
gathered and normalised there; timed to ``block_until_ready``). For each
prints the one-off setup time (decoding, for the cached paths) and the steady
batch rate, measured over ``--batches`` batches after the first.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dataset", default=os.path.join(
      HERE, "..", "..", "shared", "data", "anime-faces-96", "face"))
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--paths", default="memory,stream,synthetic,device")
  args = ap.parse_args()

  import jax  # noqa: PLC0415

  from bench import common  # noqa: PLC0415
  from dcgan_jax import parallel  # noqa: PLC0415
  from dcgan_jax.data import device_input, input_pipeline

  for path in args.paths.split(","):
    config = common.get_config("anime", batch_size=args.batch)
    config.dataset = "synthetic" if path == "synthetic" else args.dataset
    config.cache = path != "stream"
    t0 = time.perf_counter()
    inp = input_pipeline.create_input(config, process_index=0, process_count=1)
    if path == "device":  # the rows' placement and the gather the step does first
      runner = parallel.make_runner("pmap")
      images = runner.put_copies(inp.images)
      gather = jax.pmap(device_input.gather, axis_name=parallel.AXIS, in_axes=(0, 1))
      rows = device_input.index_rows(len(inp.images), args.batch, config.seed)
      inp.batches = (gather(images, runner.put_batch(next(rows)[None])) for _ in iter(int, 1))
      inp.description += ", gathered on the device"
    first = jax.block_until_ready(next(inp.batches))
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.batches):
      b = next(inp.batches)
    jax.block_until_ready(b)
    dt = time.perf_counter() - t0
    assert b.shape == first.shape
    print(f"{path:10s} {inp.description}: setup {setup:.1f}s, batch {b.shape} {b.dtype}, "
          f"{args.batches} batches in {dt:.2f}s", flush=True)
    print(f"{path}_imgs_per_s={args.batch * args.batches / dt:.1f}", flush=True)


if __name__ == "__main__":
  main()
