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
``make_step`` compiles one call of ``config.steps_per_call`` iterations,
mapped over every device: the metrics (and the first non-finite step)
accumulate inside it and are read only where the loop logs, draws or saves,
so an ordinary step is one compiled call plus the next batch's placement.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from dcgan_jax import augment, checkpoints, config_lib, losses, parallel, periodic, summaries
from dcgan_jax.data import device_input, input_pipeline
from dcgan_jax.state import GANState, create_train_state, make_models, update_ema


def _maybe(flag, update: Callable, carry, empty):
  """``update(carry)`` -> (carry, metrics) if ``flag`` (a bool or a traced bool), else
  (carry, ``empty``)."""
  if isinstance(flag, bool):
    return update(carry) if flag else (carry, empty)
  return lax.cond(flag, update, lambda c: (c, empty), carry)


def train_step(state: GANState, real, do_d, do_g, *, generator, discriminator, nz: int,
               axis_name: str = parallel.AXIS, ema_decay: float = 0.0, loss: str = "bce",
               diffaugment: tuple[str, ...] = ()):
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
    loss: ``losses.LOSSES``.
    diffaugment: the transforms of every image D sees (``augment.parse``).

  Returns:
    (new state, {'d': D's metrics, 'g': G's}) averaged over replicas
    (``summaries.METRICS[loss]``); the metrics of a net this iteration did not
    update are empty (count 0).
  """
  base = jax.random.fold_in(state.rng, state.step)
  k1, k2 = jax.random.split(base)
  k_aug = jax.random.split(jax.random.fold_in(base, 1), 3)
  b, index, count = real.shape[0], lax.axis_index(axis_name), lax.axis_size(axis_name)
  d_metrics, g_metrics = summaries.METRICS[loss]

  def noise(key):
    # Every replica draws the global batch's noise and takes its slice, so the
    # run does not depend on how many devices share the batch.
    z = jax.random.normal(key, (b * count, nz))
    return lax.dynamic_slice_in_dim(z, index * b, b)

  def seen(key, x):  # what D sees of x: augmented, in both nets' steps
    return augment.apply(key, x, diffaugment, index, count) if diffaugment else x
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
      logit_real, upd = run_d(d_params, d.batch_stats, seen(k_aug[0], real))
      logit_fake, upd = run_d(d_params, upd.get("batch_stats", {}), seen(k_aug[1], fake))
      return losses.d_loss(loss, logit_real, logit_fake), (
          upd.get("batch_stats", {}), logit_real, logit_fake)

    (value, (d_stats, lr, lf)), grads = jax.value_and_grad(d_loss, has_aux=True)(d.params)
    d = d.apply_gradients(grads=mean(grads), batch_stats=d_stats)
    return (g, d), d_metrics.single_from_model_output(
        loss_d=mean(value), **{k: mean(v) for k, v in losses.d_outputs(loss, lr, lf).items()})

  def g_update(nets):
    g, d = nets

    def g_loss(g_params):
      fake, g_upd = run_g(g_params, g.batch_stats, noise(k2))
      logit, d_upd = run_d(d.params, d.batch_stats, seen(k_aug[2], fake))
      return losses.g_loss(loss, logit), (g_upd["batch_stats"], d_upd.get("batch_stats", {}),
                                          logit)

    (value, (g_stats, d_stats, logit)), grads = jax.value_and_grad(
        g_loss, has_aux=True)(g.params)
    g = g.apply_gradients(grads=mean(grads), batch_stats=g_stats)
    return (g, d.replace(batch_stats=d_stats)), g_metrics.single_from_model_output(
        loss_g=mean(value), **{k: mean(v) for k, v in losses.g_outputs(loss, logit).items()})

  nets, m_d = _maybe(do_d, d_update, (state.g, state.d), d_metrics.empty())
  (g, d), m_g = _maybe(do_g, g_update, nets, g_metrics.empty())
  # Per-device statistics (sync off) differ between replicas: keep their mean
  # so every replica holds the same state (a no-op when they are synchronised).
  g = g.replace(batch_stats=mean(g.batch_stats))
  d = d.replace(batch_stats=mean(d.batch_stats))
  ema = state.ema
  if ema_decay > 0:
    ema = update_ema(ema, g.variables, ema_decay, state.step)
  return state.replace(step=state.step + 1, g=g, d=d, ema=ema), {"d": m_d, "g": m_g}


def _real(batch, i, images):
  """Row ``i`` of the call's batch, as images (gathered from ``images`` when given)."""
  rows = lax.dynamic_index_in_dim(batch, i, keepdims=False)
  return rows if images is None else device_input.gather(images, rows)


def _single(state, summary, batch, images, do_d: bool, do_g: bool, *, step_fn):
  """One iteration, ``do_d`` and ``do_g`` fixed (a straight-line program)."""
  assert batch.shape[0] == 1, f"a call without a loop takes one batch, got {batch.shape[0]}"
  state, m = step_fn(state, _real(batch, 0, images), do_d, do_g)
  return state, summaries.accumulate(summary, state.step, m, do_d, do_g)


def _iterations(state, summary, batch, images, *, step_fn, d_every: int, g_every: int,
                hide_trip_count: bool):
  """``len(batch)`` iterations of ``step_fn`` as one compiled loop on this replica.

  ``do_d`` and ``do_g`` are computed from the state's step inside the loop (a
  ``lax.cond`` when ``d_every`` / ``g_every`` > 1).
  """
  def body(i, carry):
    state, summary = carry
    do_d = True if d_every == 1 else state.step % d_every == 0
    do_g = True if g_every == 1 else state.step % g_every == 0
    state, m = step_fn(state, _real(batch, i, images), do_d, do_g)
    return state, summaries.accumulate(summary, state.step, m, do_d, do_g)

  n = batch.shape[0]
  if hide_trip_count:
    # A trip count XLA cannot see keeps the loop a loop for every K (K = 1
    # included), so the iteration compiles the same way whatever K is, and
    # one call of K steps gives bit-identical parameters to K calls of one.
    n = lax.optimization_barrier(jnp.int32(n))
  return lax.fori_loop(0, n, body, (state, summary))


@dataclasses.dataclass(frozen=True)
class Step:
  """The compiled training call of ``make_step`` and how to feed it.

  Attributes:
    runner: places the state, batches and images (``parallel.Runner``).
    compiled: the mapped, jitted function behind ``call``.
    summary: ``summaries.empty()`` on the devices, to start from and reset to.
    flags: training step -> the static arguments ``compiled`` takes after the
      images for a call starting there ((do_d, do_g), or none).
  """

  runner: parallel.Runner
  compiled: Callable
  summary: Any
  flags: Callable[[int], tuple]

  def call(self, state, summary, batch, images, step: int):
    """One iteration per row of ``batch`` (placed by ``runner.put_batch``).

    Args:
      state: the device state (donated).
      summary: the summary to accumulate into (``self.summary`` to start anew).
      batch: (K, host_batch, ...) images, or index rows into ``images``.
      images: None, or the device-resident images (``runner.put_copies``).
      step: the training step of the first iteration.

    Returns:
      (new device state, new summary).
    """
    return self.compiled(state, summary, batch, images, *self.flags(step))


_ROLES = ("replicated", "replicated", "batch", "copies")


def make_step(config, *, loop: bool | None = None) -> Step:
  """Builds the training call for ``config`` (models, wrapper, ``d_every``/``g_every``).

  Args:
    config: the model keys, dtype, conv_impl, sync_batch_stats, ema_decay, loss,
      diffaugment, d_every, g_every, parallel, steps_per_call.
    loop: run a call's iterations as one compiled loop (``lax.fori_loop``;
      default: when ``steps_per_call`` > 1). Without it a call is one
      iteration, compiled once per (do_d, do_g) it meets: a straight-line
      program, which XLA:CPU runs several times faster than the same step
      inside a loop (bench/README.md, "Training loop").

  Returns:
    A ``Step``; its ``call`` compiles on first use.
  """
  runner = parallel.make_runner(config.parallel)
  axis = parallel.AXIS if config.sync_batch_stats else None
  generator, discriminator = make_models(config, axis)
  step_fn = functools.partial(train_step, generator=generator, discriminator=discriminator,
                              nz=config.nz, ema_decay=config.ema_decay, loss=config.loss,
                              diffaugment=augment.parse(config.diffaugment))
  summary = runner.put_state(summaries.empty(config.loss))
  if loop is None:
    loop = config.steps_per_call > 1
  if loop:
    fn = runner.compile(functools.partial(
        _iterations, step_fn=step_fn, d_every=config.d_every, g_every=config.g_every,
        hide_trip_count=jax.default_backend() == "cpu"), _ROLES)
    return Step(runner, fn, summary, lambda step: ())
  fn = runner.compile(functools.partial(_single, step_fn=step_fn),
                      (*_ROLES, "static", "static"))
  return Step(runner, fn, summary,
              lambda step: (step % config.d_every == 0, step % config.g_every == 0))


def train_and_evaluate(config, workdir: str) -> GANState:
  """Trains the GAN described by ``config``, writing summaries to ``workdir``.

  Args:
    config: an ml_collections ConfigDict (every key: dcgan_jax/defaults.py).
    workdir: where TensorBoard events, sample grids and checkpoints go. A
      workdir holding checkpoints is resumed from the latest one; one already
      trained to the config's length is left as it is.

  Returns:
    The final (unreplicated) training state. On SIGTERM/SIGINT, the state
    saved at the step where training stopped.
  """
  with contextlib.ExitStack() as stack:
    run = periodic.Run(config, workdir, stack)  # checks config, data and workdir first
    state, saved = checkpoints.restore_or_init(
        run.ckpts, create_train_state(config, jax.random.PRNGKey(config.seed)), config)
    start = int(state.step)
    if run.finished(start, periodic.known_length(saved, config)) or run.stopped_early(start):
      return state
    inp = input_pipeline.create_input(config, start_step=start)
    total = config_lib.train_length(config, inp.steps_per_epoch)
    if run.finished(start, total):
      return state
    config_lib.check_call_boundaries(config, total,
                                     checkpoints.save_every_steps(config, inp.steps_per_epoch))
    step = make_step(config)
    feed = device_input.feed(config, inp, step.runner, start, total)
    stack.callback(feed.close)
    run.start(inp, start, total, step, feed, saved["message"] if saved else "A new run.")
    if run.stopped_early(start):
      return state
    pstate, summary = step.runner.put_state(state), step.summary
    del state
    done, stopped = start, False
    for done, host, batch in feed.calls:
      pstate, summary = step.call(pstate, summary, batch, feed.images, done - len(host))
      summary, stopped = run.after_call(done, pstate, summary, host)
      if stopped:
        break
    run.finish(done, stopped)
    return step.runner.get(pstate)
