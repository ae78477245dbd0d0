#!/usr/bin/env python
"""The accelerator run of issue 6, as one script: fp32 and bf16 against the bound
and against PyTorch eager on the same device.

    python bench/accelerator.py --batch 256 --steps 50 --warmup 5 \
        --torch-ref .carry/torch_ref.py

For each dtype, the project's step (``common.time_step``: the step ``train.py``
runs, on a fixed device batch, after compilation) in img/s and as a share of the
bf16 dense compute bound of one H200 (``--bound``, ≈390k img/s at batch 256:
``../shared/bench/README.md``). Then the device-resident input path
(``device_input``) in img/s on random uint8 faces, and, if torch imports, the
PyTorch reference's iteration (``--torch-ref``: its ``build`` and
``train_step``, run eagerly with ``torch.set_default_device``) on the same
device. Each result is one ``key=value`` line; on a CPU it runs too (small
``--batch``), which is how it is tested.
"""

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _torch_imgs_per_s(path: str, batch: int, steps: int, warmup: int) -> tuple[float, str]:
  import torch  # noqa: PLC0415

  device = "cuda" if torch.cuda.is_available() else "cpu"
  spec = importlib.util.spec_from_file_location("torch_ref", path)
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  torch.set_default_device(device)  # the reference builds its tensors on it
  g, d, opt_g, opt_d = ref.build(0)
  real = torch.rand(batch, 3, 96, 96) * 2 - 1
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run(n):
    for _ in range(n):
      ref.train_step(g, d, opt_g, opt_d, real, torch.randn(batch, ref.NZ, 1, 1),
                     torch.randn(batch, ref.NZ, 1, 1))
    sync()

  run(warmup + 1)
  t0 = time.perf_counter()
  run(steps)
  return batch * steps / (time.perf_counter() - t0), f"torch {torch.__version__} {device}"


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=50)
  ap.add_argument("--warmup", type=int, default=5)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--bound", type=float, default=390_000.0,
                  help="img/s of the bf16 dense compute bound")
  ap.add_argument("--ngf", type=int, default=None, help="narrower nets (tests)")
  ap.add_argument("--input-images", type=int, default=6000,
                  help="random uint8 faces for the device input path (0: skip)")
  ap.add_argument("--torch-ref", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench", "torch_ref.py"))
  args = ap.parse_args()

  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from bench import common  # noqa: PLC0415
  from dcgan_jax import device_input, parallel  # noqa: PLC0415

  dev = jax.devices()[0]
  print(f"device={dev.platform}:{getattr(dev, 'device_kind', '')} jax={jax.__version__} "
        f"devices={jax.device_count()} batch={args.batch}", flush=True)
  for dtype in args.dtypes.split(","):
    config = common.get_config("anime", batch_size=args.batch, dtype=dtype,
                               ngf=args.ngf, ndf=args.ngf)
    r = common.time_step(config, args.steps, args.warmup)
    print(f"jax_{dtype}_imgs_per_s={r['imgs_per_s']:.1f} ms_per_step={r['ms_per_step']:.3f} "
          f"of_bound={r['imgs_per_s'] / args.bound:.4g} first_call_s={r['first_call_s']:.1f} "
          f"lossD={r['loss_d']:.3f} lossG={r['loss_g']:.3f}", flush=True)

  if args.input_images:
    images = np.random.default_rng(0).integers(0, 256, (args.input_images, 96, 96, 3),
                                               dtype=np.uint8)
    batches = device_input.DeviceBatches(images, args.batch, 0,
                                           parallel.make_runner(lambda *a: a, "pmap"))
    jax.block_until_ready(next(batches))
    t0 = time.perf_counter()
    for _ in range(args.steps):
      b = next(batches)
    jax.block_until_ready(b)
    print(f"device_input_imgs_per_s={args.batch * args.steps / (time.perf_counter() - t0):.1f}",
          flush=True)

  if not os.path.exists(args.torch_ref):
    print(f"torch_imgs_per_s=skipped ({args.torch_ref} not found)")
    return
  try:
    ips, what = _torch_imgs_per_s(args.torch_ref, args.batch, args.steps, args.warmup)
  except ImportError as e:
    print(f"torch_imgs_per_s=skipped ({e})")
    return
  print(f"torch_imgs_per_s={ips:.1f} ({what}, eager fp32, the reference's train_step)")


if __name__ == "__main__":
  main()
