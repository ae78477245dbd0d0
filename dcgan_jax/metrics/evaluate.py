"""Scoring generators: FID/KID of a state, the best-FID checkpoint, ``--mode=eval``.

``--mode=eval`` scores ``fid.num_samples`` samples of the latest checkpoint's
G (the EMA G when the run kept one, then G itself too) against the training
images and prints ``fid=`` / ``kid=`` lines (``fid_no_ema=`` / ``kid_no_ema=``).
During training ``write_fid`` scores the state and ``BestFid`` keeps the
checkpoint with the lowest FID so far.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
from absl import logging

from dcgan_jax import checkpoints, console, fs
from dcgan_jax.metrics import fid
from dcgan_jax.samples import sampling
from dcgan_jax.state import GANState, ema_on, make_models, sampling_variables


def score_state(evaluator, generator, state: GANState) -> tuple[dict, dict]:
  """FID/KID of G's sampling variables (the EMA when kept) and, with EMA, of G itself.

  Returns:
    ({'fid', 'kid'[, 'fid_no_ema', 'kid_no_ema']}, {tag: uint8 samples}) with
    tag '' for the sampling variables and '_no_ema' for G without EMA.
  """
  runs = [("", sampling_variables(state))]
  if state.ema is not None:
    runs.append(("_no_ema", state.g.variables))
  scores, samples = {}, {}
  for tag, variables in runs:
    m, images = evaluator.score_generator(
        generator, sampling.prepare(generator, variables, evaluator.config))
    scores.update({k + tag: v for k, v in m.items()})
    samples[tag] = images
  return scores, samples


class BestFid:
  """Keeps the checkpoint with the lowest FID so far in ``WORKDIR/checkpoints_best``.

  The best value and its step live in ``WORKDIR/best_fid.json``, so a resumed
  run keeps comparing against them.
  """

  DIR = "checkpoints_best"

  def __init__(self, workdir: str):
    self.record = fs.path(workdir) / "best_fid.json"
    self.fid, self.step = math.inf, None
    if self.record.exists():
      try:
        saved = json.loads(self.record.read_text())
        self.fid, self.step = float(saved["fid"]), int(saved["step"])
      except (ValueError, KeyError, TypeError) as e:
        logging.warning("%s cannot be read (%s): the next FID starts the best anew.",
                        self.record, e)
    self.ckpts = checkpoints.Checkpoints(fs.join(workdir, self.DIR), max_to_keep=1)

  def update(self, value: float, state, config) -> bool:
    """Saves ``state`` if ``value`` is the lowest FID so far; returns whether it did."""
    if not value < self.fid:
      return False
    self.fid, self.step = float(value), int(state.step)
    path = self.ckpts.save(state, config, {})
    tmp = self.record.with_name(self.record.name + ".tmp")
    tmp.write_text(json.dumps({"fid": self.fid, "step": self.step, "checkpoint": path}))
    tmp.replace(self.record)
    logging.info("Best FID so far (%.4g at step %d): checkpoint %s.", self.fid, self.step, path)
    return True

  def close(self) -> None:
    self.ckpts.close()


def write_fid(writer, evaluator, step: int, generator, state, best: BestFid | None,
              config) -> dict:
  """Scores ``state`` at training step ``step``: TensorBoard, the log, the best checkpoint."""
  t = time.perf_counter()
  scores, _ = score_state(evaluator, generator, state)
  writer.write_scalars(step, scores)
  logging.info("Step %d: %s (%.0f s)", step,
               ", ".join(f"{k}={v:.4g}" for k, v in scores.items()), time.perf_counter() - t)
  if best is not None:
    best.update(scores["fid"], state, config)
  return scores


FID_BUDGET = 0.1  # FID's time as a share of the training time (fid.eval_every = -1)


def plan_fid(config, evaluator, secs_per_step: float) -> int:
  """Every how many steps training scores FID, logged with what it costs.

  ``fid.eval_every`` when set (> 0), with a warning when FID then takes over
  ``FID_BUDGET`` of the time; -1 picks the smallest multiple of ``log_every``
  that keeps it within. The cost is the images scored per evaluation
  (``fid.num_samples``, twice with EMA) at the Inception's rate measured here,
  plus the reference features, once.

  Args:
    config: fid.*, the EMA keys, log_every.
    evaluator: the run's ``fid.Evaluator``.
    secs_per_step: the training step's measured time, periodic work included.
  """
  per_image, ref_images = evaluator.secs_per_image(), evaluator.reference_cost()
  images = config.fid.num_samples * (2 if ema_on(config) else 1)
  secs, ref = images * per_image, ref_images * per_image
  every = config.fid.eval_every
  if every < 0:
    blocks = math.ceil(secs / (FID_BUDGET * secs_per_step) / config.log_every)
    every = max(1, blocks) * config.log_every
  share = secs / (every * secs_per_step)
  line = (f"FID: {images} images at {1 / per_image:.1f} img/s (the Inception here) take "
          f"~{console.duration(secs)} per evaluation"
          + (f", plus ~{console.duration(ref)} once for {ref_images} reference images"
             if ref else "")
          + f"; every {every} steps of {secs_per_step:.3g} s that is {100 * share:.0f}% of "
          "the training time")
  if share > 1.5 * FID_BUDGET:
    least = math.ceil(secs / (FID_BUDGET * secs_per_step))
    logging.warning("%s. Raise fid.eval_every to %d or more (or -1: automatic), or lower "
                    "fid.num_samples.", line, least)
  else:
    logging.info("%s%s.", line, " (fid.eval_every=-1)" if config.fid.eval_every < 0 else "")
  return every


def restore_state(config, workdir: str):
  """The latest checkpoint of ``workdir``, or of ``config.init_from`` when set.

  Returns:
    (the restored ``GANState``, the config to build the models with: the
    checkpoint's model sizes, dtype and EMA keys).
  """
  state, cfg, path = checkpoints.restore_trained(
      config, workdir, "Train first (--mode=train with this workdir) or point "
      "--config.init_from at a trained workdir or checkpoint.")
  logging.info("Evaluating %s", path)
  return state, cfg


def evaluate(config, workdir: str, state: GANState | None = None) -> dict:
  """FID/KID of ``state`` (default: restored from the workdir).

  Args:
    config: the run's config (dataset, fid.*; model sizes when ``state`` is given).
    workdir: where the checkpoints, the reference cache and samples go.
    state: a training state to score instead of a checkpoint.

  Returns:
    {'fid', 'kid'[, 'fid_no_ema', 'kid_no_ema']}, or {} without weights.
  """
  if fid.resolve_weights(config) is None:
    fid.Evaluator.create(config, workdir)  # logs why FID is skipped
    return {}
  if state is None:
    # The checkpoint's model sizes (nz above all) before anything samples.
    state, config = restore_state(config, workdir)
  evaluator = fid.Evaluator.create(config, workdir)
  t = time.perf_counter()
  scores, samples = score_state(evaluator, make_models(config)[0], state)
  if config.fid.save_samples:
    for tag, images in samples.items():
      path = fs.path(workdir) / f"samples{tag}.npy"
      with path.open("wb") as f:
        np.save(f, images)
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
