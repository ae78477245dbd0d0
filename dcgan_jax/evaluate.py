"""``--mode=eval``: FID and KID of a trained generator.

Scores ``config.fid.num_samples`` samples of G -- the EMA generator when the
run kept one (``config.ema_decay > 0``), and then G without EMA as well --
against the training images (reference features cached in the workdir), and
prints ``fid=<value>`` / ``kid=<value>`` lines (``fid_no_ema=`` / ``kid_no_ema=``
too with EMA). With ``config.fid.save_samples`` the uint8 NHWC samples scored
are written to ``<workdir>/samples.npy`` (``samples_no_ema.npy``).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from dcgan_jax import fid, train


def restore_state(config, workdir: str):
  """The latest checkpoint of ``workdir``, or of ``config.init_from`` when set.

  Returns:
    (the restored ``GANState``, the config to build the models with).
  """
  state, cfg, path = train.restore_trained(
      config, workdir, "Train first (--mode=train with this workdir) or point "
      "--config.init_from at a trained workdir or checkpoint.")
  logging.info("Evaluating %s", path)
  return state, cfg


def evaluate(config, workdir: str, state: train.GANState | None = None) -> dict:
  """FID/KID of ``state`` (default: restored from the workdir).

  Args:
    config: the run's config (model sizes, dataset, fid.*, ema_decay).
    workdir: where the checkpoints, the reference cache and samples go.
    state: a training state to score instead of a checkpoint.

  Returns:
    {'fid', 'kid'[, 'fid_no_ema', 'kid_no_ema']}, or {} without weights.
  """
  evaluator = fid.Evaluator.create(config, workdir)
  if evaluator is None:
    return {}
  if state is None:
    state, config = restore_state(config, workdir)
  t = time.perf_counter()
  generator = train.make_models(config)[0]
  scores, samples = train.score_state(evaluator, generator, state)
  if config.fid.save_samples:
    os.makedirs(workdir, exist_ok=True)
    for tag, images in samples.items():
      path = os.path.join(workdir, f"samples{tag}.npy")
      np.save(path, images)
      logging.info("Wrote the %d samples scored to %s", len(images), path)
  logging.info("Scored %d samples in %.0f s (step %d).", config.fid.num_samples,
               time.perf_counter() - t, int(state.step))
  return scores


def main(config, workdir: str) -> dict:
  """Runs ``evaluate`` and prints one ``name=value`` line per metric."""
  scores = evaluate(config, workdir)
  if not scores:
    print("fid=skipped (no FID Inception weights)")
  for k, v in scores.items():
    print(f"{k}={v:.6g}")
  return scores
