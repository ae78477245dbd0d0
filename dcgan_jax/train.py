"""Training: state, the per-replica GAN step, and the training loop.

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
"""

import functools
import itertools
import json
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging
from clu import metrics
from flax import struct
from jax import lax

from dcgan_jax import (
  checkpoints,
  config_lib,
  guards,
  input_pipeline,
  models,
  parallel,
  preemption,
  sampling,
)


class NetState(struct.PyTreeNode):
  """One network's parameters, BatchNorm statistics and optimizer state."""

  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  def apply_gradients(self, grads) -> "NetState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


class GANState(struct.PyTreeNode):
  """Everything a training run carries from step to step."""

  step: jax.Array   # int32: iterations done
  rng: jax.Array    # uint32[2]: the run's base key; noise is fold_in(rng, step)
  g: NetState
  d: NetState
  # EMA of G's {'params', 'batch_stats'} (config.ema_decay > 0), else None.
  ema: Any = None


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


def get_dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def make_models(config, axis_name: str | None = None):
  """The (Generator, Discriminator) pair for ``config``.

  Args:
    config: needs nz, ngf, ndf, dtype, init_scheme.
    axis_name: BatchNorm statistics are averaged over this mapped axis
      (None: per-call statistics, also what initialisation and sampling use).
  """
  dtype = get_dtype(config.dtype)
  return (models.Generator(config.nz, config.ngf, axis_name, dtype, config.init_scheme),
          models.Discriminator(config.ndf, axis_name, dtype, config.init_scheme))


def create_train_state(config, rng) -> GANState:
  """Initialises both nets and their Adam optimizers.

  Args:
    config: model sizes, lr_g, lr_d, beta1, beta2.
    rng: a PRNGKey; the state keeps a key derived from it for the noise.

  Returns:
    A ``GANState`` at step 0 (unreplicated).
  """
  generator, discriminator = make_models(config)
  kg, kd, knoise = jax.random.split(rng, 3)
  z = jnp.zeros((2, config.nz))
  x = jnp.zeros((2, config.image_size, config.image_size, 3))
  g_vars = jax.jit(functools.partial(generator.init, train=False))(kg, z)
  d_vars = jax.jit(functools.partial(discriminator.init, train=False))(kd, x)

  def net(variables, lr):
    tx = optax.adam(lr, b1=config.beta1, b2=config.beta2)
    return NetState(variables["params"], variables["batch_stats"],
                    tx.init(variables["params"]), tx)

  ema = None
  if config.ema_decay > 0:
    ema = jax.tree_util.tree_map(jnp.array, dict(g_vars))  # a copy, not an alias
  return GANState(step=jnp.zeros((), jnp.int32), rng=knoise,
                  g=net(g_vars, config.lr_g), d=net(d_vars, config.lr_d), ema=ema)


def update_ema(ema, variables, decay: float, step):
  """One EMA update towards G's ``variables`` after ``step`` + 1 iterations.

  The decay ramps up as TF's ExponentialMovingAverage with ``num_updates``
  (``min(decay, (1 + n) / (10 + n))``) so short runs are not dominated by
  the initial weights.
  """
  n = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  return jax.tree_util.tree_map(lambda e, v: d * e + (1.0 - d) * v, ema, variables)


def sampling_variables(state: GANState):
  """G's variables for samples, generate and evaluation: the EMA when kept."""
  return state.ema if state.ema is not None else state.g.variables


def restore_trained(config, workdir: str, hint: str):
  """A trained run's latest checkpoint, for sampling or evaluation.

  Args:
    config: the current config; ``init_from``, when set, names the run (a
      workdir, checkpoints folder or step folder) instead of ``workdir``.
    workdir: the run whose checkpoints are used.
    hint: appended to the error when there is no checkpoint (what to do).

  Returns:
    (state, config to build the models with: ``config`` with the checkpoint's
    model sizes, dtype and ``ema_decay``, the checkpoint's folder).
  """
  import ml_collections  # noqa: PLC0415 (configs are ConfigDicts; not needed to train)
  try:
    ckpts, step = checkpoints.open_for_reading(config.init_from or workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e} {hint}") from e
  saved = ckpts.config(step)
  cfg = ml_collections.ConfigDict(config.to_dict())
  for key in (*checkpoints.MODEL_KEYS, "dtype"):
    cfg[key] = saved[key]
  cfg.ema_decay = saved.get("ema_decay", 0.0)  # whether the state holds an EMA
  state = ckpts.restore(create_train_state(cfg, jax.random.PRNGKey(0)), step)
  ckpts.close()
  return state, cfg, ckpts.step_path(step)


def bce(logits, target: float):
  """Mean sigmoid cross-entropy: the original's Sigmoid + BCELoss, stably."""
  return optax.sigmoid_binary_cross_entropy(
      logits, jnp.full_like(logits, target)).mean()


def train_step(state: GANState, real, do_d: bool, do_g: bool, *, generator,
               discriminator, nz: int, axis_name: str = parallel.AXIS,
               ema_decay: float = 0.0):
  """One GAN iteration on this replica's share of the batch.

  Args:
    state: the replica's copy of the training state.
    real: (local_batch, S, S, 3) float images in [-1, 1].
    do_d: whether this iteration updates D (static).
    do_g: whether this iteration updates G (static).
    generator: the G module (BatchNorm axis set for synchronised statistics).
    discriminator: the D module.
    nz: latent size.
    axis_name: the mapped axis gradients are averaged over.
    ema_decay: if > 0, ``state.ema`` follows G's new variables (``update_ema``).

  Returns:
    (new state, {'d': DMetrics, 'g': GMetrics}) with the metrics of the
    updates that ran, averaged over replicas.
  """
  k1, k2 = jax.random.split(jax.random.fold_in(state.rng, state.step))
  b = real.shape[0]
  replicas = lax.psum(1, axis_name)

  def noise(key):
    # Every replica draws the global batch's noise and takes its slice, so the
    # run does not depend on how many devices share the batch.
    z = jax.random.normal(key, (b * replicas, nz))
    return lax.dynamic_slice_in_dim(z, lax.axis_index(axis_name) * b, b)
  g, d = state.g, state.d
  out = {}
  mean = functools.partial(lax.pmean, axis_name=axis_name)

  def run_g(g_params, g_stats, z):
    return generator.apply({"params": g_params, "batch_stats": g_stats}, z,
                           mutable=["batch_stats"])

  def run_d(d_params, d_stats, x):
    return discriminator.apply({"params": d_params, "batch_stats": d_stats}, x,
                               mutable=["batch_stats"])

  if do_d:
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
    d = d.apply_gradients(mean(grads)).replace(batch_stats=d_stats)
    out["d"] = DMetrics.single_from_model_output(
        loss_d=mean(loss), d_real=mean(jax.nn.sigmoid(lr).mean()),
        d_fake=mean(jax.nn.sigmoid(lf).mean()))

  if do_g:
    def g_loss(g_params):
      fake, g_upd = run_g(g_params, g.batch_stats, noise(k2))
      logit, d_upd = run_d(d.params, d.batch_stats, fake)
      return bce(logit, 1.0), (g_upd["batch_stats"], d_upd["batch_stats"], logit)

    (loss, (g_stats, d_stats, logit)), grads = jax.value_and_grad(
        g_loss, has_aux=True)(g.params)
    g = g.apply_gradients(mean(grads)).replace(batch_stats=g_stats)
    d = d.replace(batch_stats=d_stats)
    out["g"] = GMetrics.single_from_model_output(
        loss_g=mean(loss), d_fake_g=mean(jax.nn.sigmoid(logit).mean()))

  # Per-device statistics (sync off) differ between replicas: keep their mean
  # so every replica holds the same state (a no-op when they are synchronised).
  g = g.replace(batch_stats=mean(g.batch_stats))
  d = d.replace(batch_stats=mean(d.batch_stats))
  ema = state.ema
  if ema_decay > 0:
    ema = update_ema(ema, {"params": g.params, "batch_stats": g.batch_stats},
                     ema_decay, state.step)
  return state.replace(step=state.step + 1, g=g, d=d, ema=ema), out


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


def _write_grids(writer, workdir: str, step: int, generator, state, fixed_z, real):
  """Sample grid from the fixed noise and a grid of real images: TB + PNG."""
  fake = sampling.sample(generator, sampling_variables(state), fixed_z)
  grids = {"samples": sampling.make_grid(fake),
           "real": sampling.make_grid(real[: len(fixed_z)])}
  writer.write_images(step, {k: v[None] for k, v in grids.items()})
  sampling.save_png(f"{workdir}/samples/samples_{step:07d}.png", grids["samples"])
  sampling.save_png(f"{workdir}/samples/real_{step:07d}.png", grids["real"])


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
    m, images = evaluator.score_generator(generator, variables)
    scores.update({k + tag: v for k, v in m.items()})
    samples[tag] = images
  return scores, samples


def _write_fid(writer, evaluator, step: int, generator, state) -> dict:
  t = time.perf_counter()
  scores, _ = score_state(evaluator, generator, state)
  writer.write_scalars(step, scores)
  logging.info("Step %d: %s (%.0f s)", step,
               ", ".join(f"{k}={v:.4g}" for k, v in scores.items()), time.perf_counter() - t)
  return scores


class BestFid:
  """Keeps the checkpoint with the lowest FID so far in ``WORKDIR/checkpoints_best``.

  The best value and its step live in ``WORKDIR/best_fid.json``, so a resumed
  run keeps comparing against them.
  """

  DIR = "checkpoints_best"

  def __init__(self, workdir: str):
    self.record = os.path.join(workdir, "best_fid.json")
    self.ckpts = checkpoints.Checkpoints(os.path.join(workdir, self.DIR), max_to_keep=1)
    self.fid, self.step = math.inf, None
    if os.path.exists(self.record):
      with open(self.record) as f:
        saved = json.load(f)
      self.fid, self.step = saved["fid"], saved["step"]

  def update(self, value: float, state, config) -> bool:
    """Saves ``state`` if ``value`` is the lowest FID so far; returns whether it did."""
    if not value < self.fid:
      return False
    self.fid, self.step = float(value), int(state.step)
    path = self.ckpts.save(state, config)
    with open(self.record + ".tmp", "w") as f:
      json.dump({"fid": self.fid, "step": self.step, "checkpoint": path}, f)
    os.replace(self.record + ".tmp", self.record)
    logging.info("Best FID so far (%.4g at step %d): checkpoint %s.", self.fid, self.step, path)
    return True

  def close(self):
    self.ckpts.close()


def _device_batches(config, inp, runner, start: int) -> Iterator:
  """(host batch thunk, device batch) pairs; the thunk feeds the real-image grid."""
  if not config.input_on_device:
    return _prefetch(((lambda b=b: b), runner.put_batch(b)) for b in inp.batches)
  from dcgan_jax import device_input  # noqa: PLC0415
  # config_lib.validate refuses input_on_device for streamed folders.
  dev = device_input.DeviceBatches(inp.images, config.batch_size // jax.process_count(),
                                   config.seed, runner, start)
  return ((functools.partial(dev.host_batch, step), b)
          for step, b in zip(itertools.count(start), dev))


def train_and_evaluate(config, workdir: str) -> GANState:
  """Trains the GAN described by ``config``, writing summaries to ``workdir``.

  Args:
    config: an ml_collections ConfigDict (see configs/anime.py).
    workdir: where TensorBoard events, sample grids and checkpoints go. A
      workdir holding checkpoints is resumed from the latest one.

  Returns:
    The final (unreplicated) training state. On SIGTERM/SIGINT, the state
    saved at the step where training stopped.
  """
  # Bad config, data or workdir fail here, before anything is compiled.
  config_lib.validate(config)
  input_pipeline.check_dataset(config.dataset)
  guards.check_workdir(workdir)
  from clu import metric_writers, periodic_actions  # noqa: PLC0415 (needs TF)

  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  state = create_train_state(config, jax.random.PRNGKey(config.seed))
  ckpts = checkpoints.Checkpoints(f"{workdir}/{checkpoints.CHECKPOINT_DIR}",
                                  max_to_keep=config.max_to_keep)
  state = checkpoints.restore_or_init(ckpts, state, config)
  start = int(state.step)
  inp = input_pipeline.create_input(config, start_step=start)
  total = num_train_steps(config, inp.steps_per_epoch)
  save_every = checkpoints.save_every_steps(config, inp.steps_per_epoch)
  logging.info("Data: %s, %d steps/epoch; training steps %d..%d on %d device(s).",
               inp.description, inp.steps_per_epoch, start, total, jax.device_count())
  logging.info("Process %d of %d, %d local device(s), wrapper %s.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), config.parallel)

  axis = parallel.AXIS if config.sync_batch_stats else None
  generator, discriminator = make_models(config, axis)
  sampler = make_models(config)[0]
  runner = parallel.make_runner(
      functools.partial(train_step, generator=generator,
                        discriminator=discriminator, nz=config.nz,
                        ema_decay=config.ema_decay),
      config.parallel)
  fixed_z = jax.random.normal(jax.random.PRNGKey(config.seed + 1),
                              (config.num_plot, config.nz))
  pstate = runner.put_state(state)
  del state
  evaluator = best = None
  if is_chief and config.fid.eval_every > 0:
    from dcgan_jax import fid  # noqa: PLC0415
    evaluator = fid.Evaluator.create(config, workdir)
    # Orbax saves are collective: with several hosts only the chief knows the
    # FID, so the best checkpoint is kept in single-process runs only.
    if evaluator is not None and jax.process_count() == 1:
      best = BestFid(workdir)
  batches = _device_batches(config, inp, runner, start)
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  acc: dict[str, Any] = {}
  t_log, n_log = None, 0
  # A NaN stop first lets an in-flight save of an earlier, finite state finish.
  guard = guards.FiniteGuard(runner.get, before_raise=ckpts.wait)
  nan_hint = (f" Lower the learning rates (lr_d={config.lr_d}, lr_g={config.lr_g})"
              f"{' or train in float32' if config.dtype != 'float32' else ''}.")
  stop = preemption.StopSignal().install()

  for step in range(start, total):
    real_grid, batch = next(batches)
    pstate, out = runner.step(pstate, batch, step % config.d_every == 0,
                              step % config.g_every == 0)
    for k, m in runner.get(out).items():
      acc[k] = m if k not in acc else acc[k].merge(m)
    done = step + 1
    guard.add(done, out)
    if t_log is None:  # the first step includes compilation: time from here
      jax.block_until_ready(pstate)
      t_log, n_log = time.perf_counter(), done
    report(done)
    if done % config.log_every == 0 or done == total:
      guard.check(acc, nan_hint)
      scalars = {k: float(v) for m in acc.values() for k, v in m.compute().items()}
      acc = {}
      now = time.perf_counter()
      if done > n_log:
        scalars["imgs_per_sec"] = (done - n_log) * config.batch_size / (now - t_log)
      t_log, n_log = now, done
      writer.write_scalars(done, scalars)
    if is_chief and (done % config.plot_every == 0 or done == total):
      guard.check(acc, nan_hint)
      _write_grids(writer, workdir, done, sampler, runner.get(pstate),
                   fixed_z, real_grid())
    # Not forced at the last step: on a CPU a short run would spend far longer
    # scoring fid.num_samples images than training (use --mode=eval instead).
    if evaluator is not None and done % config.fid.eval_every == 0:
      guard.check(acc, nan_hint)
      host_state = runner.get(pstate)
      scores = _write_fid(writer, evaluator, done, sampler, host_state)
      if best is not None:
        best.update(scores["fid"], host_state, config)
    # Hosts agree on stopping where they sync anyway (the logging steps).
    stopping = stop.should_stop(sync=done % config.log_every == 0)
    if done % save_every == 0 or done == total or stopping:
      saved = runner.get(pstate)
      # Never a checkpoint of a non-finite state: the last good one stays.
      guard.check(acc, nan_hint)
      guards.check_state_finite(saved, done, nan_hint, before_raise=ckpts.wait)
      with guards.checkpoint_writes(ckpts, done):
        path = ckpts.save(saved, config)
      logging.info("Saving checkpoint of step %d to %s.", done, path)
    if stopping:
      with guards.checkpoint_writes(ckpts, done):
        ckpts.wait()
      logging.warning("Stopped by %s after step %d; checkpoint saved to %s. Rerun with "
                      "the same workdir to resume.", stop.name or "another host", done, path)
      break
  stop.uninstall()
  with guards.checkpoint_writes(ckpts, done):
    ckpts.close()
  if best is not None:
    best.close()
  writer.flush()
  if inp.skipped:
    logging.warning("Input: %s.", input_pipeline.format_skipped(inp.skipped, inp.num_files))
  return runner.get(pstate)
