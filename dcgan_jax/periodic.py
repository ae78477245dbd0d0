"""A training run's open resources and the work it does between compiled calls.

``Run`` opens, checks and releases what a run holds -- the signal handler,
the workdir lock, the checkpoints, the summary writer, the FID evaluator and
its best checkpoint -- on every path out of it (an error, a NaN stop, a
signal). At each call boundary ``after_call`` does the periodic work that is
due: the log line and scalars, the sample grids, FID, checkpoints, and the
preemption check. Nothing here runs on an ordinary step but reading the stop
flag and ``ReportProgress``'s clock.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

import jax
from absl import logging

from dcgan_jax import (
  checkpoints,
  config_lib,
  console,
  conv_ops,
  guards,
  parallel,
  preemption,
  summaries,
)
from dcgan_jax.data import input_pipeline
from dcgan_jax.samples import sampling
from dcgan_jax.state import make_models, sampling_variables


@contextlib.contextmanager
def released(resource):
  """``resource.close()`` on the way out; quietly (logged) when an error is on its way."""
  try:
    yield resource
  except BaseException:
    guards.run_quietly(resource.close)
    raise
  resource.close()


def write_grids(writer, workdir: str, step: int, generator, state, fixed_z, real,
                config) -> str:
  """Sample grid from the fixed noise and a grid of real images: TB + PNG; its path."""
  variables = sampling.prepare(generator, sampling_variables(state), config)
  fake = sampling.sample(generator, variables, fixed_z)
  grids = {"samples": sampling.make_grid(fake), "real": sampling.make_grid(real)}
  writer.write_images(step, {k: v[None] for k, v in grids.items()})
  for name, grid in grids.items():
    sampling.save_png(f"{workdir}/samples/{name}_{step:07d}.png", grid)
  return f"{workdir}/samples/samples_{step:07d}.png"


def known_length(saved: dict | None, config) -> int | None:
  """The run's length before any data is read, when it can be known.

  ``num_train_steps`` when set; else from the steps per epoch the checkpoint
  recorded, if it saw the same data and batch.
  """
  spe = saved and saved["progress"].get("steps_per_epoch")
  same = spe and all(saved["config"].get(k) == config[k]
                     for k in ("dataset", "batch_size", "synthetic_size"))
  if config.num_train_steps > 0 or same:
    return config_lib.train_length(config, spe)
  return None


class Run:
  """One training run: what it holds open, and its periodic work.

  Args:
    config: the run's config (checked here first).
    workdir: the run's folder (checked, then locked, here).
    stack: releases everything this run opens.
  """

  def __init__(self, config, workdir: str, stack: contextlib.ExitStack):
    # First: a signal from now on ends the run cleanly, start-up included.
    self.stop = stack.enter_context(preemption.StopSignal())
    # Bad config, data or workdir fail here, before anything is compiled.
    config_lib.validate(config)
    input_pipeline.check_dataset(config.dataset)
    guards.check_workdir(workdir)
    self.config, self.workdir, self.stack = config, workdir, stack
    self.is_chief = jax.process_index() == 0
    self.lock = stack.enter_context(guards.lock_workdir(workdir, holder=self.is_chief))
    self.ckpts = stack.enter_context(released(checkpoints.Checkpoints(
        f"{workdir}/{checkpoints.CHECKPOINT_DIR}", max_to_keep=config.max_to_keep)))
    self.opened = time.perf_counter()
    self.nan_hint = (f" Lower the learning rates (lr_d={config.lr_d}, lr_g={config.lr_g})"
                     f"{' or train in float32' if config.dtype != 'float32' else ''}.")
    self.last_save = None

  @staticmethod
  def _fid_budget() -> float:
    from dcgan_jax.metrics import evaluate  # noqa: PLC0415
    return evaluate.FID_BUDGET

  def finished(self, start: int, total: int | None) -> bool:
    """Whether the run already reached its length (then it says so, once)."""
    if total is None or start < total:
      return False
    logging.info("Already trained to step %d (%s); raise num_train_steps or num_epochs to "
                 "train on.", start, config_lib.describe_length(self.config, total))
    return True

  def stopped_early(self, start: int) -> bool:
    """Whether a signal came during start-up (then there is nothing new to save)."""
    if not self.stop.should_stop(sync=True):
      return False
    logging.warning("Stopped by %s during start-up, before training step %d: nothing new "
                    "to save. Rerun with the same workdir to %s.", self.stop.name or
                    "another host", start + 1,
                    f"resume from step {start}" if start else "start")
    return True

  def start(self, inp, start: int, total: int, step, feed, origin: str) -> None:
    """Opens what the loop writes to (summaries, FID) and prints the run's header.

    Args:
      inp: the ``input_pipeline.Input``.
      start: the first step; total: the run's length.
      step: the ``train.Step`` (its runner reads the devices).
      feed: the ``device_input.Feed`` (real images for the grids).
      origin: where the state comes from, a sentence.
    """
    from clu import metric_writers, periodic_actions  # noqa: PLC0415 (needs TF)
    config = self.config
    self.lock.announce()
    self.inp, self.total, self.step, self.feed = inp, total, step, feed
    self.save_every = checkpoints.save_every_steps(config, inp.steps_per_epoch)
    self.writer = self.stack.enter_context(released(metric_writers.create_default_writer(
        self.workdir, just_logging=not self.is_chief)))
    self.report = periodic_actions.ReportProgress(num_train_steps=total, writer=self.writer)
    self.sampler = make_models(config)[0]
    self.fixed_z = jax.random.normal(jax.random.PRNGKey(config.seed + 1),
                                     (config.num_plot, config.nz))
    self.evaluator = self.best = self.fid_every = None
    if self.is_chief and config.fid.eval_every != 0:
      from dcgan_jax.metrics import evaluate, fid  # noqa: PLC0415
      self.evaluator = fid.Evaluator.create(config, self.workdir)
      # Orbax saves are collective: with several hosts only the chief knows the
      # FID, so the best checkpoint is kept in single-process runs only.
      if self.evaluator is not None and jax.process_count() == 1:
        self.best = self.stack.enter_context(released(evaluate.BestFid(self.workdir)))
    self.t0 = self.t_log = self.n_log = None
    host_batch, device_batch = parallel.split_batch(config.batch_size)
    fid_when = ("FID off" if self.evaluator is None else "FID as often as keeps it within "
                f"{self._fid_budget():.0%} of the training time" if config.fid.eval_every < 0
                else f"FID every {config.fid.eval_every}")
    for line in console.header(
        workdir=self.workdir, data=inp.description, steps_per_epoch=inp.steps_per_epoch,
        start=start, total=total,
        origin=origin,
        devices=f"{jax.device_count()} x {jax.devices()[0].platform} on "
                f"{jax.process_count()} host(s); {config.parallel}, conv_impl "
                f"{conv_ops.resolve(config.conv_impl)}, steps_per_call {config.steps_per_call}",
        batch=f"{config.batch_size} ({host_batch} per host, {device_batch} per device)",
        cadence=f"log every {config.log_every}, grids every {config.plot_every}, "
                f"checkpoints every {self.save_every}, {fid_when}"):
      logging.info("%s", line)
    if config.steps_per_call > 1 and jax.default_backend() == "cpu":
      # XLA:CPU runs a compiled loop body several times slower than the same
      # body compiled straight (bench/README.md, "Training loop").
      logging.warning("steps_per_call=%d on CPU: XLA:CPU runs the compiled loop of steps "
                      "several times slower than one step per call; "
                      "--config.steps_per_call=1 is faster here (K > 1 is for fast "
                      "accelerators).", config.steps_per_call)

  def log(self, done: int, host_summary) -> None:
    """The log step: scalars to TensorBoard, one console line."""
    scalars = summaries.host_scalars(host_summary)
    now = time.perf_counter()
    rate = eta = None
    if done > self.n_log:
      rate = scalars["imgs_per_sec"] = (
          (done - self.n_log) * self.config.batch_size / (now - self.t_log))
      steps_per_sec = (done - self.n0) / (now - self.t0)
      eta = (self.total - done) / steps_per_sec if steps_per_sec > 0 else None
    self.t_log, self.n_log = now, done
    self.writer.write_scalars(done, scalars)
    logging.info("%s", console.step_line(done, self.total, scalars, rate, eta))

  def after_call(self, done: int, pstate, summary, host) -> tuple[Any, bool]:
    """The periodic work due at step ``done``; returns (summary, whether to stop)."""
    config, due = self.config, lambda every: done % every == 0 or done == self.total
    if self.t0 is None:  # the first call includes compilation: time from its end
      jax.block_until_ready(pstate)
      self.t0 = self.t_log = time.perf_counter()
      self.n0 = self.n_log = done
    self.report(done)
    # Hosts agree on stopping where they sync anyway (the logging steps).
    stopping = self.stop.should_stop(sync=done % config.log_every == 0)
    log, plot, save = due(config.log_every), due(config.plot_every), due(self.save_every)
    if log or plot or save or stopping:
      # The same steps on every host, so all stop together on a NaN; one read.
      host_summary = self.step.runner.get(summary)
      guards.check_finite(host_summary["nonfinite"], self.nan_hint,
                          before_raise=self.ckpts.wait)
      if log:
        self.log(done, host_summary)
        summary = self.step.summary
    host_state = functools.cache(lambda: self.step.runner.get(pstate))  # read once
    if self.is_chief and plot:
      path = write_grids(self.writer, self.workdir, done, self.sampler, host_state(),
                         self.fixed_z, self.feed.real_images(host), self.config)
      logging.info("Grid: %s", path)
    if self.evaluator is not None and self._fid_due(done):
      self._fid(done, summary, host_state)
    if save or stopping:
      self.save(done, host_state())
    return summary, stopping

  def _fid_due(self, done: int) -> bool:
    """Whether FID is due; at the first log after compiling, plans it (``evaluate.plan_fid``).

    The step time is the one that log measured (its read of the summary waits
    for the devices), so it is the loop's.
    """
    every = self.config.fid.eval_every
    if self.fid_every is None:
      if self.n_log <= self.n0:  # nothing timed yet
        return every > 0 and done % every == 0
      from dcgan_jax.metrics import evaluate  # noqa: PLC0415
      secs_per_step = (self.t_log - self.t0) / (self.n_log - self.n0)
      self.fid_every = evaluate.plan_fid(self.config, self.evaluator, secs_per_step)
    return done % self.fid_every == 0

  def _fid(self, done: int, summary, host_state) -> None:
    """FID of the state at ``done`` (the chief's alone), unless its losses were not finite."""
    from dcgan_jax.metrics import evaluate  # noqa: PLC0415
    if int(self.step.runner.get(summary["nonfinite"]).step):
      # Every host stops at the next log, grid or checkpoint, which checks.
      logging.warning("FID at step %d skipped: a loss was not finite.", done)
      return
    evaluate.write_fid(self.writer, self.evaluator, done, self.sampler, host_state(),
                       self.best, self.config)

  def save(self, done: int, host_state) -> None:
    # Never a checkpoint of a non-finite state: the last good one stays.
    guards.check_state_finite(host_state, done, self.nan_hint, before_raise=self.ckpts.wait)
    with guards.checkpoint_writes(self.ckpts, done):
      self.last_save = self.ckpts.save(host_state, self.config,
                                       {"steps_per_epoch": self.inp.steps_per_epoch})
    logging.info("Checkpoint: step %d -> %s", done, self.last_save)

  def finish(self, done: int, stopped: bool) -> None:
    """Waits for the last save (one clear error if it failed) and says how it ended."""
    with guards.checkpoint_writes(self.ckpts, done):
      self.ckpts.wait()
    if stopped:
      logging.warning("Stopped by %s after step %d; checkpoint saved to %s. Rerun with "
                      "the same workdir to resume.", self.stop.name or "another host", done,
                      self.last_save)
    else:
      logging.info("%s", console.done_line(done, time.perf_counter() - self.opened,
                                           self.last_save, f"{self.workdir}/samples"))
    if self.inp.skipped:
      logging.warning("Input: %s.", input_pipeline.format_skipped(self.inp.skipped,
                                                                  self.inp.num_files))
