#!/usr/bin/env python
"""The accelerator run, as one script: every formulation per layer, the step and
the whole training loop, in fp32 and bf16, K = 1 and K = 8, and PyTorch eager.

    python bench/accelerator.py --batch 256 --steps 50 --loop-steps 400 \
        --torch-ref .carry/torch_ref.py

* Per layer (``bench/layers.py``'s ``time_layers``): forward plus both gradients
  of every convolution of G and D in each formulation of ``conv_ops``.
* The step (``common.time_step``: the step ``train.py`` runs, on a fixed device
  batch, after compilation) for each dtype, each ``conv_impl`` and K in ``--ks``,
  in img/s and as a share of the bf16 dense compute bound of one H200
  (``--bound``, ≈390k img/s at batch 256: ``../shared/bench/README.md``).
* The loop (``bench/train_loop.py``'s ``measure``: ``train.train_and_evaluate``
  itself, on the synthetic faces with ``input_on_device``, periodic work scaled
  down to ``--loop-steps``) for each dtype and K, and its ratio to the step.
* The PyTorch reference's own iteration (``--torch-ref``: its ``build`` and
  ``train_step``, run eagerly with ``torch.set_default_device``) on the same
  device, if torch imports.

Each result is one ``key=value`` line. On a machine without TensorFlow (the GPU
machine here) TensorFlow and TensorBoard are stubbed out, so the loop runs with
its summaries going nowhere; everything else it does is main.py's. On a CPU it
runs too (small sizes), which is how it is tested.
"""

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stub_missing_tensorflow() -> bool:
  """Stands in for TensorFlow/TensorBoard when absent (clu's writers import them)."""
  if importlib.util.find_spec("tensorflow") is not None:
    return False
  from unittest import mock  # noqa: PLC0415
  for name in ("tensorflow", "tensorboard", "tensorboard.plugins",
               "tensorboard.plugins.hparams", "tensorboard.plugins.hparams.api"):
    sys.modules[name] = mock.MagicMock()
  return True


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
  ap.add_argument("--steps", type=int, default=50, help="timed iterations of the step")
  ap.add_argument("--warmup", type=int, default=5)
  ap.add_argument("--loop-steps", type=int, default=400, help="steps of each loop run (0: skip)")
  ap.add_argument("--ks", default="1,8", help="steps_per_call values")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--impls", default="auto,cpu", help="conv_impl values timed in the step")
  ap.add_argument("--layers", action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument("--layer-reps", type=int, default=5)
  ap.add_argument("--bound", type=float, default=390_000.0,
                  help="img/s of the bf16 dense compute bound")
  ap.add_argument("--ngf", type=int, default=None, help="narrower nets (tests)")
  ap.add_argument("--torch-ref", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench", "torch_ref.py"))
  args = ap.parse_args()
  stubbed = _stub_missing_tensorflow()

  import jax  # noqa: PLC0415

  from bench import common, layers, train_loop  # noqa: PLC0415
  from dcgan_jax import conv_ops  # noqa: PLC0415

  dev = jax.devices()[0]
  print(f"device={dev.platform}:{getattr(dev, 'device_kind', '')} jax={jax.__version__} "
        f"devices={jax.device_count()} batch={args.batch} conv_impl_auto="
        f"{conv_ops.resolve('auto')} tensorflow_stubbed={stubbed}", flush=True)
  ks = [int(k) for k in args.ks.split(",")]
  if args.layers:
    for dtype in args.dtypes.split(","):
      for name, form, _, t, gflops in layers.time_layers(args.batch, args.layer_reps,
                                                         parts=("all",), dtype=dtype):
        print(f"layer_{name}_{form}_{dtype}_ms={1e3 * t:.3f} gflops={gflops:.1f}", flush=True)

  for dtype in args.dtypes.split(","):
    for impl in args.impls.split(","):
      for k in ks:
        config = common.get_config("anime", batch_size=args.batch, dtype=dtype,
                                   ngf=args.ngf, ndf=args.ngf, conv_impl=impl,
                                   steps_per_call=k)
        r = common.time_step(config, max(1, args.steps // k), max(1, args.warmup // k))
        print(f"step_{dtype}_{impl}_k{k}_imgs_per_s={r['imgs_per_s']:.1f} "
              f"ms_per_step={r['ms_per_step']:.3f} of_bound={r['imgs_per_s'] / args.bound:.4g} "
              f"first_call_s={r['first_call_s']:.1f} lossD={r['loss_d']:.3f} "
              f"lossG={r['loss_g']:.3f}", flush=True)
        if not args.loop_steps or impl != "auto":
          continue
        lc = train_loop.loop_config("anime", args.loop_steps, batch_size=args.batch,
                                    dtype=dtype, ngf=args.ngf, ndf=args.ngf,
                                    dataset="synthetic", input_on_device=True,
                                    steps_per_call=k)
        m = train_loop.measure(lc)
        print(f"loop_{dtype}_k{k}_imgs_per_s={m['imgs_per_s']:.1f} "
              f"loop_efficiency={m['imgs_per_s'] / r['imgs_per_s']:.3f} "
              f"compiles_after_warmup={m['compiles_after_warmup']} wall_s={m['wall_s']:.1f}",
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
