"""Training: the per-replica GAN iteration, the compiled call, and the loop.

One iteration is the original AnimeGAN iteration:
  * D step (every ``d_every`` steps): D on a real batch and, in a second pass,
    on a detached fake batch G(z1); BCE(D(x), 1) + BCE(D(G(z1)), 0); Adam on D.
  * G step (every ``g_every`` steps): fresh noise z2; non-saturating loss
    BCE(D(G(z2)), 1) through the just-updated D; Adam on G.
Both nets stay in training mode throughout, so (as in PyTorch) every forward
pass, the G pass of the D step and the D pass of the G step included, updates
BatchNorm running statistics.

``train_step`` is written per replica: it sees its share of the global batch
and averages gradients over the mapped axis ``parallel.AXIS``; with
``sync_batch_stats`` BatchNorm statistics are averaged over that axis too.
``make_step`` compiles ``config.steps_per_call`` iterations as one call,
mapped over every device: the metrics (and the first non-finite step)
accumulate inside it and are read only where the loop logs, draws or saves,
so an ordinary step is one compiled call plus the next batch's placement.
"""

import contextlib
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics
from jax import lax

from dcgan_jax import (
  checkpoints,
  config_lib,
  device_input,
  guards,
  input_pipeline,
  parallel,
  preemption,
  sampling,
)
from dcgan_jax.state import (
  GANState,
  create_train_state,
  make_models,
  sampling_variables,
  update_ema,
)


# (No `from __future__ import annotations` here: clu reads these annotations.)
@flax.struct.dataclass
class DMetrics(metrics.Collection):
  loss_d: metrics.Average.from_output("loss_d")
  d_real: metrics.Average.from_output("d_real")  # mean D(x)
  d_fake: metrics.Average.from_output("d_fake")  # mean D(G(z)) in the D step


@flax.struct.dataclass
class GMetrics(metrics.Collection):
  loss_g: metrics.Average.from_output("loss_g")
  d_fake_g: metrics.Average.from_output("d_fake_g")  # mean D(G(z)) in the G step


def bce(logits, target: float):
  """Mean sigmoid cross-entropy: the original's Sigmoid + BCELoss, stably."""
  return optax.sigmoid_binary_cross_entropy(
      logits, jnp.full_like(logits, target)).mean()


def _maybe(flag, update: Callable, carry, empty):
  """``update(carry)`` -> (carry, metrics) if ``flag`` (a bool or a traced bool), else
  (carry, ``empty``)."""
  if isinstance(flag, bool):
    return update(carry) if flag else (carry, empty)
  return lax.cond(flag, update, lambda c: (c, empty), carry)


def train_step(state: GANState, real, do_d, do_g, *, generator, discriminator, nz: int,
               axis_name: str = parallel.AXIS, ema_decay: float = 0.0):
  """One GAN iteration on this replica's share of the batch.

  Args:
    state: the replica's copy of the training state.
    real: (device_batch, S, S, 3) float images in [-1, 1].
    do_d: whether this iteration updates D (a Python bool, or a traced bool).
    do_g: whether this iteration updates G (likewise).
    generator: the G module (BatchNorm axis set for synchronised statistics).
    discriminator: the D module.
    nz: latent size.
    axis_name: the mapped axis gradients are averaged over.
    ema_decay: if > 0, ``state.ema`` follows G's new variables (``update_ema``).

  Returns:
    (new state, {'d': DMetrics, 'g': GMetrics}), averaged over replicas; the
    metrics of a net this iteration did not update are empty (count 0).
  """
  k1, k2 = jax.random.split(jax.random.fold_in(state.rng, state.step))
  b = real.shape[0]

  def noise(key):
    # Every replica draws the global batch's noise and takes its slice, so the
    # run does not depend on how many devices share the batch.
    z = jax.random.normal(key, (b * lax.axis_size(axis_name), nz))
    return lax.dynamic_slice_in_dim(z, lax.axis_index(axis_name) * b, b)
  mean = functools.partial(lax.pmean, axis_name=axis_name)

  def run_g(g_params, g_stats, z):
    return generator.apply({"params": g_params, "batch_stats": g_stats}, z,
                           mutable=["batch_stats"])

  def run_d(d_params, d_stats, x):
    return discriminator.apply({"params": d_params, "batch_stats": d_stats}, x,
                               mutable=["batch_stats"])

  def d_update(nets):
    g, d = nets
    fake, g_upd = run_g(g.params, g.batch_stats, noise(k1))
    g = g.replace(batch_stats=g_upd["batch_stats"])
    fake = lax.stop_gradient(fake)

    def d_loss(d_params):
      # Two passes, as the original: BatchNorm sees real and fake apart.
      logit_real, upd = run_d(d_params, d.batch_stats, real)
      logit_fake, upd = run_d(d_params, upd["batch_stats"], fake)
      loss = bce(logit_real, 1.0) + bce(logit_fake, 0.0)
      return loss, (upd["batch_stats"], logit_real, logit_fake)

    (loss, (d_stats, lr, lf)), grads = jax.value_and_grad(d_loss, has_aux=True)(d.params)
    d = d.apply_gradients(grads=mean(grads), batch_stats=d_stats)
    return (g, d), DMetrics.single_from_model_output(
        loss_d=mean(loss), d_real=mean(jax.nn.sigmoid(lr).mean()),
        d_fake=mean(jax.nn.sigmoid(lf).mean()))

  def g_update(nets):
    g, d = nets

    def g_loss(g_params):
      fake, g_upd = run_g(g_params, g.batch_stats, noise(k2))
      logit, d_upd = run_d(d.params, d.batch_stats, fake)
      return bce(logit, 1.0), (g_upd["batch_stats"], d_upd["batch_stats"], logit)

    (loss, (g_stats, d_stats, logit)), grads = jax.value_and_grad(
        g_loss, has_aux=True)(g.params)
    g = g.apply_gradients(grads=mean(grads), batch_stats=g_stats)
    return (g, d.replace(batch_stats=d_stats)), GMetrics.single_from_model_output(
        loss_g=mean(loss), d_fake_g=mean(jax.nn.sigmoid(logit).mean()))

  nets, m_d = _maybe(do_d, d_update, (state.g, state.d), DMetrics.empty())
  (g, d), m_g = _maybe(do_g, g_update, nets, GMetrics.empty())
  # Per-device statistics (sync off) differ between replicas: keep their mean
  # so every replica holds the same state (a no-op when they are synchronised).
  g = g.replace(batch_stats=mean(g.batch_stats))
  d = d.replace(batch_stats=mean(d.batch_stats))
  ema = state.ema
  if ema_decay > 0:
    ema = update_ema(ema, g.variables, ema_decay, state.step)
  return state.replace(step=state.step + 1, g=g, d=d, ema=ema), {"d": m_d, "g": m_g}


def empty_summary() -> dict:
  """What a call accumulates between two reads: both nets' metrics, the first NaN."""
  names = (*DMetrics.__annotations__, *GMetrics.__annotations__)
  return {"d": DMetrics.empty(), "g": GMetrics.empty(),
          "nonfinite": guards.FirstNonFinite.empty(names)}


def _iterations(state, summary, batch, images, *, step_fn, d_every: int, g_every: int,
                hide_trip_count: bool):
  """``len(batch)`` iterations of ``step_fn`` on this replica, accumulating ``summary``.

  ``batch`` is (K, device_batch, S, S, 3) images, or (K, device_batch) rows
  of the device-resident ``images`` (``device_input``).
  """
  def body(i, carry):
    state, summary = carry
    rows = lax.dynamic_index_in_dim(batch, i, keepdims=False)
    real = rows if images is None else device_input.gather(images, rows)
    # Static when every step updates the net (the default): no cond at all.
    do_d = True if d_every == 1 else state.step % d_every == 0
    do_g = True if g_every == 1 else state.step % g_every == 0
    state, m = step_fn(state, real, do_d, do_g)
    values_d, values_g = m["d"].compute(), m["g"].compute()
    ran = {**dict.fromkeys(values_d, do_d), **dict.fromkeys(values_g, do_g)}
    values = {**values_d, **values_g}
    return state, {"d": summary["d"].merge(m["d"]), "g": summary["g"].merge(m["g"]),
                   "nonfinite": summary["nonfinite"].update(state.step, values, ran)}

  n = batch.shape[0]
  if hide_trip_count:
    # A trip count XLA cannot see keeps the loop a loop for every K (K = 1
    # included), so the iteration compiles the same way whatever K is, and
    # K steps per call give bit-identical parameters to K calls of one.
    n = lax.optimization_barrier(jnp.int32(n))
  return lax.fori_loop(0, n, body, (state, summary))


@dataclasses.dataclass(frozen=True)
class Step:
  """The compiled training call of ``make_step`` and how to feed it.

  Attributes:
    runner: places the state, batches and images (``parallel.Runner``).
    call: ``call(state, summary, batch, images) -> (state, summary)``: one
      iteration per row of ``batch`` (placed by ``runner.put_batch``), the
      state donated. ``images`` is None, or the device-resident images
      (``runner.put_copies``) that ``batch`` indexes.
    summary: ``empty_summary()`` on the devices, to start from and reset to.
  """

  runner: parallel.Runner
  call: Callable
  summary: Any


def make_step(config) -> Step:
  """Builds the training call for ``config`` (models, wrapper, ``d_every``/``g_every``).

  Args:
    config: model sizes and dtype, conv_impl, sync_batch_stats, nz, ema_decay,
      d_every, g_every, parallel.

  Returns:
    A ``Step``; its ``call`` compiles on first use, once per length of batch.
  """
  runner = parallel.make_runner(config.parallel)
  axis = parallel.AXIS if config.sync_batch_stats else None
  generator, discriminator = make_models(config, axis)
  step_fn = functools.partial(train_step, generator=generator, discriminator=discriminator,
                              nz=config.nz, ema_decay=config.ema_decay)
  fn = functools.partial(_iterations, step_fn=step_fn, d_every=config.d_every,
                         g_every=config.g_every,
                         hide_trip_count=jax.default_backend() == "cpu")
  call = runner.compile(fn, ("replicated", "replicated", "batch", "copies"))
  return Step(runner, call, runner.put_state(empty_summary()))


def host_scalars(summary) -> dict[str, float]:
  """A host copy of a summary -> {name: mean} of the metrics that ran."""
  return {name: float(m.total) / int(m.count)
          for c in (summary["d"], summary["g"])
          for name, m in vars(c).items() if isinstance(m, metrics.Average) and int(m.count)}


def num_train_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


def _prefetch(it: Iterator, size: int = 2) -> Iterator:
  """Runs ``it`` in a background thread, ``size`` items ahead."""
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()

  def work():
    try:
      for item in it:
        q.put(item)
    except BaseException as e:  # noqa: BLE001 (re-raised in the consumer)
      q.put(e)
    q.put(sentinel)

  threading.Thread(target=work, daemon=True).start()
  while (item := q.get()) is not sentinel:
    if isinstance(item, BaseException):
      raise item
    yield item


@dataclasses.dataclass
class _Feed:
  """The calls' inputs: (steps done after the call, host batch, device batch).

  With ``input_on_device`` the host batch is rows of image indices and
  ``images`` the device-resident images; else the host batch is the images.
  ``steps_per_call`` host batches are stacked per call; a run resumed at a
  step that is not a multiple of it first takes a shorter call.
  """

  calls: Iterator
  images: Any
  real_images: Callable[[np.ndarray], np.ndarray]  # host batch -> its last images


def _feed(config, inp: input_pipeline.Input, runner: parallel.Runner, start: int,
          total: int) -> _Feed:
  k = config.steps_per_call
  if config.input_on_device:  # config_lib.validate refuses it for streamed folders
    host_batch = parallel.split_batch(config.batch_size)[0]
    source = device_input.index_rows(len(inp.images), host_batch, config.seed, start)
    images = runner.put_copies(inp.images)
    real = functools.partial(device_input.host_images, inp.images)
  else:
    source, images, real = inp.batches, None, lambda rows: rows

  def calls():
    done = start
    while done < total:
      n = min(k - done % k, total - done)
      host = np.stack([next(source) for _ in range(n)])
      done += n
      yield done, host, runner.put_batch(host)
  return _Feed(_prefetch(calls()), images, lambda host: real(host[-1][: config.num_plot]))


def _write_grids(writer, workdir: str, step: int, generator, state, fixed_z, real):
  """Sample grid from the fixed noise and a grid of real images: TB + PNG."""
  fake = sampling.sample(generator, sampling_variables(state), fixed_z)
  grids = {"samples": sampling.make_grid(fake), "real": sampling.make_grid(real)}
  writer.write_images(step, {k: v[None] for k, v in grids.items()})
  for name, grid in grids.items():
    sampling.save_png(f"{workdir}/samples/{name}_{step:07d}.png", grid)


@contextlib.contextmanager
def _released(resource):
  """``resource.close()`` on the way out; quietly (logged) when an error is on its way."""
  try:
    yield resource
  except BaseException:
    guards.run_quietly(resource.close)
    raise
  resource.close()


class _Run:
  """One training run's open resources and its periodic work.

  Everything opened here is released on every path out of the run (an error,
  a NaN stop, a signal): the signal handler, the checkpoint managers and the
  summary writer.
  """

  feed: _Feed

  def __init__(self, config, workdir: str, stack: contextlib.ExitStack):
    self.config, self.workdir, self.stack = config, workdir, stack
    self.stop = stack.enter_context(preemption.StopSignal())
    self.ckpts = stack.enter_context(_released(checkpoints.Checkpoints(
        f"{workdir}/{checkpoints.CHECKPOINT_DIR}", max_to_keep=config.max_to_keep)))
    self.is_chief = jax.process_index() == 0
    self.nan_hint = (f" Lower the learning rates (lr_d={config.lr_d}, lr_g={config.lr_g})"
                     f"{' or train in float32' if config.dtype != 'float32' else ''}.")

  def start(self, inp, total: int, step: Step):
    """Opens what the loop writes to: the summary writer, FID, the grids' inputs."""
    from clu import metric_writers, periodic_actions  # noqa: PLC0415 (needs TF)
    config = self.config
    self.inp, self.total, self.step = inp, total, step
    self.save_every = checkpoints.save_every_steps(config, inp.steps_per_epoch)
    self.writer = self.stack.enter_context(_released(metric_writers.create_default_writer(
        self.workdir, just_logging=not self.is_chief)))
    self.report = periodic_actions.ReportProgress(num_train_steps=total, writer=self.writer)
    self.sampler = make_models(config)[0]
    self.fixed_z = jax.random.normal(jax.random.PRNGKey(config.seed + 1),
                                     (config.num_plot, config.nz))
    self.evaluator = self.best = None
    if self.is_chief and config.fid.eval_every > 0:
      from dcgan_jax import evaluate, fid  # noqa: PLC0415
      self.evaluator = fid.Evaluator.create(config, self.workdir)
      # Orbax saves are collective: with several hosts only the chief knows the
      # FID, so the best checkpoint is kept in single-process runs only.
      if self.evaluator is not None and jax.process_count() == 1:
        self.best = self.stack.enter_context(_released(evaluate.BestFid(self.workdir)))
    self.t_log = self.n_log = None

  def stopped_early(self, start: int) -> bool:
    """Whether a signal came during start-up (then there is nothing new to save)."""
    if not self.stop.should_stop(sync=True):
      return False
    logging.warning("Stopped by %s during start-up, before training step %d: nothing new "
                    "to save. Rerun with the same workdir to %s.", self.stop.name or
                    "another host", start + 1, f"resume from step {start}" if start else
                    "start")
    return True

  def check(self, summary) -> None:
    """Stops on a non-finite loss recorded since the summary was last reset."""
    guards.check_finite(self.step.runner.get(summary["nonfinite"]), self.nan_hint,
                        before_raise=self.ckpts.wait)

  def log(self, done: int, summary):
    """Writes the summary's means (and img/s) at step ``done``; returns it reset."""
    self.check(summary)
    scalars = host_scalars(self.step.runner.get(summary))
    now = time.perf_counter()
    if done > self.n_log:
      scalars["imgs_per_sec"] = (done - self.n_log) * self.config.batch_size / (now - self.t_log)
    self.t_log, self.n_log = now, done
    self.writer.write_scalars(done, scalars)
    return self.step.summary

  def after_call(self, done: int, pstate, summary, host) -> tuple[Any, bool]:
    """The periodic work due at step ``done``; returns (summary, whether to stop)."""
    config, due = self.config, lambda every: done % every == 0 or done == self.total
    if self.t_log is None:  # the first call includes compilation: time from here
      jax.block_until_ready(pstate)
      self.t_log, self.n_log = time.perf_counter(), done
    self.report(done)
    if due(config.log_every):
      summary = self.log(done, summary)
    host_state = functools.cache(lambda: self.step.runner.get(pstate))  # read once
    if self.is_chief and due(config.plot_every):
      self.check(summary)
      _write_grids(self.writer, self.workdir, done, self.sampler, host_state(), self.fixed_z,
                   self.feed.real_images(host))
    if self.evaluator is not None and done % config.fid.eval_every == 0:
      self.check(summary)
      from dcgan_jax import evaluate  # noqa: PLC0415
      evaluate.write_fid(self.writer, self.evaluator, done, self.sampler, host_state(),
                         self.best, config)
    # Hosts agree on stopping where they sync anyway (the logging steps).
    stopping = self.stop.should_stop(sync=done % config.log_every == 0)
    if due(self.save_every) or stopping:
      self.check(summary)
      self.save(done, host_state())
    return summary, stopping

  def save(self, done: int, host_state) -> None:
    # Never a checkpoint of a non-finite state: the last good one stays.
    guards.check_state_finite(host_state, done, self.nan_hint, before_raise=self.ckpts.wait)
    with guards.checkpoint_writes(self.ckpts, done):
      self.last_save = self.ckpts.save(host_state, self.config,
                                       {"steps_per_epoch": self.inp.steps_per_epoch})
    logging.info("Saving checkpoint of step %d to %s.", done, self.last_save)

  def finish(self, done: int, stopped: bool) -> None:
    """Waits for the last save (one clear error if it failed) and says how it ended."""
    with guards.checkpoint_writes(self.ckpts, done):
      self.ckpts.wait()
    if stopped:
      logging.warning("Stopped by %s after step %d; checkpoint saved to %s. Rerun with "
                      "the same workdir to resume.", self.stop.name or "another host", done,
                      self.last_save)
    if self.inp.skipped:
      logging.warning("Input: %s.", input_pipeline.format_skipped(self.inp.skipped,
                                                                  self.inp.num_files))


def _finished(saved: dict, config, start: int) -> int | None:
  """The run's length if its checkpoint at ``start`` already reached it, else None.

  Known before any data is read when ``num_train_steps`` is set, or from the
  steps per epoch the checkpoint recorded (same data and batch); otherwise
  the caller decides once the data is loaded.
  """
  if config.num_train_steps > 0:
    total = config.num_train_steps
  else:
    spe = saved["progress"].get("steps_per_epoch")
    same = all(saved["config"].get(k) == config[k]
               for k in ("dataset", "batch_size", "synthetic_size"))
    if not (spe and same):
      return None
    total = num_train_steps(config, spe)
  return total if start >= total else None


def _already_trained(start: int, total: int) -> None:
  logging.info("Already trained to step %d (num_train_steps=%d); raise num_train_steps "
               "or num_epochs to train on.", start, total)


def train_and_evaluate(config, workdir: str) -> GANState:
  """Trains the GAN described by ``config``, writing summaries to ``workdir``.

  Args:
    config: an ml_collections ConfigDict (see configs/anime.py).
    workdir: where TensorBoard events, sample grids and checkpoints go. A
      workdir holding checkpoints is resumed from the latest one; one already
      trained to the config's length is left as it is.

  Returns:
    The final (unreplicated) training state. On SIGTERM/SIGINT, the state
    saved at the step where training stopped.
  """
  # Bad config, data or workdir fail here, before anything is compiled.
  config_lib.validate(config)
  input_pipeline.check_dataset(config.dataset)
  guards.check_workdir(workdir)
  with contextlib.ExitStack() as stack:
    run = _Run(config, workdir, stack)
    state, saved = checkpoints.restore_or_init(
        run.ckpts, create_train_state(config, jax.random.PRNGKey(config.seed)), config)
    start = int(state.step)
    if saved is not None and (total := _finished(saved, config, start)) is not None:
      _already_trained(start, total)
      return state
    if run.stopped_early(start):
      return state
    inp = input_pipeline.create_input(config, start_step=start)
    total = num_train_steps(config, inp.steps_per_epoch)
    if start >= total:
      _already_trained(start, total)
      return state
    config_lib.check_call_boundaries(config, total,
                                     checkpoints.save_every_steps(config, inp.steps_per_epoch))
    logging.info("Data: %s, %d steps/epoch; training steps %d..%d on %d device(s).",
                 inp.description, inp.steps_per_epoch, start, total, jax.device_count())
    logging.info("Process %d of %d, %d local device(s), wrapper %s.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), config.parallel)
    step = make_step(config)
    run.start(inp, total, step)
    if run.stopped_early(start):
      return state
    pstate, summary = step.runner.put_state(state), step.summary
    del state
    feed = run.feed = _feed(config, inp, step.runner, start, total)
    done, stopped = start, False
    for done, host, batch in feed.calls:
      pstate, summary = step.call(pstate, summary, batch, feed.images)
      summary, stopped = run.after_call(done, pstate, summary, host)
      if stopped:
        break
    run.finish(done, stopped)
    return step.runner.get(pstate)
