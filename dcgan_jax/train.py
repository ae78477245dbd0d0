"""Training: the GAN iteration, the compiled call of K iterations, and the loop.

One iteration is the original AnimeGAN's:
  * D step (every ``d_every`` steps): D on a real batch and, in a second pass,
    on a detached fake batch G(z1); BCE(D(x), 1) + BCE(D(G(z1)), 0); Adam on D.
  * G step (every ``g_every`` steps): fresh noise z2; the non-saturating
    BCE(D(G(z2)), 1) through the just-updated D; Adam on G.
Both nets stay in training mode throughout, so, as in PyTorch, every forward
pass updates BatchNorm's running statistics.
"""

import contextlib
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from dcgan_jax import (
  augment,
  checkpoints,
  config_lib,
  console,
  guards,
  losses,
  parallel,
  preemption,
  schedule,
  summaries,
)
from dcgan_jax import (
  workdir as workdir_lib,
)
from dcgan_jax.data import device_input, input_pipeline
from dcgan_jax.samples import sampling
from dcgan_jax.state import (
  GANState,
  create_train_state,
  ema_beta,
  ema_on,
  make_models,
  sampling_variables,
  update_ema,
)


def _maybe(flag, update: Callable, carry, empty):
  """``update(carry)`` if ``flag`` (a bool or a traced bool), else ``(carry, empty)``."""
  if isinstance(flag, bool):
    return update(carry) if flag else (carry, empty)
  return lax.cond(flag, update, lambda c: (c, empty), carry)


def r1_penalty(run_d, x):
  """R1 (Mescheder et al. 2018): the mean over images of |grad_x D(x)|^2 at the real ``x``."""
  grad = jax.grad(lambda x: run_d(x).sum())(x)
  return (grad.astype(jnp.float32) ** 2).sum(axis=(1, 2, 3)).mean()


def train_step(state: GANState, real, do_d, do_g, do_r1=None, *, generator, discriminator,
               nz: int, axis_name: str = parallel.AXIS, ema_beta: Callable | None = None,
               loss: str = "bce", diffaugment: tuple[str, ...] = (), r1_gamma: float = 0.0,
               r1_every: int = 1):
  """One GAN iteration on this replica's share of the batch.

  Args:
    state: the replica's copy of the training state.
    real: (device_batch, S, S, 3) images in [-1, 1].
    do_d, do_g: whether D / G are updated (Python or traced bools).
    do_r1: whether D's update adds the R1 penalty (default: every ``r1_every``
      D updates, by D's count).
    generator, discriminator: the modules (BatchNorm over ``axis_name`` when synchronised).
    nz: latent size.
    axis_name: the mapped axis gradients are averaged over.
    ema_beta: step -> the decay with which ``state.ema`` follows G (None: no EMA).
    loss: ``losses.LOSSES``.
    diffaugment: the transforms of every image D sees (``augment.parse``).
    r1_gamma: the weight of ``r1_penalty`` in D's loss, added every ``r1_every``
      D steps and scaled by it (StyleGAN2's lazy regularisation); 0: none.

  Returns:
    (new state, {'d': D's metrics, 'g': G's}) averaged over replicas; a net
    not updated has empty metrics.
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

  def seen(key, x):  # what D sees of x, in both nets' steps
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

    x_real = seen(k_aug[0], real)

    def d_loss(d_params, r1_weight=0.0):
      # Two passes, as the original: BatchNorm sees real and fake apart.
      logit_real, upd = run_d(d_params, d.batch_stats, x_real)
      logit_fake, upd = run_d(d_params, upd.get("batch_stats", {}), seen(k_aug[1], fake))
      value = losses.d_loss(loss, logit_real, logit_fake)
      total = value
      if r1_weight:  # one more pass on the reals, its BatchNorm statistics dropped
        total += r1_weight * r1_penalty(lambda x: run_d(d_params, d.batch_stats, x)[0], x_real)
      return total, (value, upd.get("batch_stats", {}), logit_real, logit_fake)

    def d_grads(r1_weight):
      return jax.grad(d_loss, has_aux=True)(d.params, r1_weight)

    r1 = (r1_every == 1 or d.step % r1_every == 0) if do_r1 is None else do_r1
    weight = 0.5 * r1_gamma * r1_every
    if r1_gamma > 0 and not isinstance(r1, bool):
      grads, (value, d_stats, lr, lf) = lax.cond(r1, lambda: d_grads(weight),
                                                 lambda: d_grads(0.0))
    else:
      grads, (value, d_stats, lr, lf) = d_grads(weight if r1_gamma > 0 and r1 else 0.0)
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
  if ema_beta is not None:
    ema = update_ema(ema, g.variables, ema_beta(state.step))
  return state.replace(step=state.step + 1, g=g, d=d, ema=ema), {"d": m_d, "g": m_g}


def make_train_call(config, runner: parallel.Runner) -> Callable:
  """The compiled call of K iterations of ``train_step``, mapped over every device.

  ``call(state, summary, batch, images, step)`` runs one iteration per row of
  ``batch`` ((K, host_batch, ...) images, or index rows into the device-kept
  ``images``), the first being training step ``step``, and returns (state,
  summary with every iteration merged in).
  """
  axis = parallel.AXIS if config.sync_batch_stats else None
  generator, discriminator = make_models(config, axis)
  step_fn = functools.partial(
      train_step, generator=generator, discriminator=discriminator, nz=config.nz,
      ema_beta=functools.partial(ema_beta, config) if ema_on(config) else None,
      loss=config.loss, diffaugment=augment.parse(config.diffaugment),
      r1_gamma=config.r1_gamma, r1_every=config.r1_every)

  def iterations(state, summary, batch, images, turns):
    def one(carry, rows, do_d, do_g, do_r1=None):
      state, summary = carry
      real = rows if images is None else device_input.gather(images, rows)
      state, m = step_fn(state, real, do_d, do_g, do_r1)
      return state, summaries.accumulate(summary, state.step, m, do_d, do_g)

    if turns is not None:  # straight code, the turns compiled in
      carry = (state, summary)
      for i, turn in enumerate(turns):
        carry = one(carry, batch[i], *turn)
      return carry

    def body(carry, rows):
      step = carry[0].step
      return one(carry, rows, True if config.d_every == 1 else step % config.d_every == 0,
                 True if config.g_every == 1 else step % config.g_every == 0), None
    return lax.scan(body, (state, summary), batch)[0]

  roles = ("replicated", "replicated", "batch", "copies")
  if jax.default_backend() != "cpu":
    mapped = runner.compile(functools.partial(iterations, turns=None), roles)

    def call(state, summary, batch, images, step):
      return mapped(state, summary, batch, images)
    call.programs, call.period = {None: mapped}, 1
    return call

  # XLA:CPU runs the step ~20x slower inside a loop (even a lax.scan of one
  # step) and ~2.5x slower behind a traced lax.cond than compiled straight
  # (bench/README.md, "One compiled path"): there a call is straight code, one
  # program per pattern of turns (D, G, R1) it meets.
  programs = {}

  def turn(k: int) -> tuple[bool, bool, bool]:
    d_updates = -(-k // config.d_every)  # D's updates before step k: its count then
    return (k % config.d_every == 0, k % config.g_every == 0,
            config.r1_gamma > 0 and d_updates % config.r1_every == 0)

  def call(state, summary, batch, images, step):
    turns = tuple(turn(k) for k in range(step, step + batch.shape[0]))
    if turns not in programs:
      programs[turns] = runner.compile(functools.partial(iterations, turns=turns), roles)
    return programs[turns](state, summary, batch, images)
  call.programs = programs  # the compiled programs so far (bench/profile_step.py)
  # Steps after which turn(k) repeats: benchmarks warm up over one period.
  call.period = math.lcm(config.d_every, config.g_every,
                         config.d_every * config.r1_every if config.r1_gamma > 0 else 1)
  return call


# --- the periodic work, one function each -------------------------------------

def log_step(writer, step: int, total: int, host_summary, clock: console.Clock) -> None:
  """Scalars to TensorBoard and one console line."""
  scalars = summaries.host_scalars(host_summary)
  rate, eta = clock.lap(step)
  if rate is not None:
    scalars.update(imgs_per_sec=rate, steps_per_sec=rate / clock.batch_size)
  writer.write_scalars(step, scalars)
  logging.info("%s", console.step_line(step, total, scalars, rate, eta))


def write_grids(writer, workdir: str, step: int, generator, state, fixed_z, real,
                config) -> None:
  """Samples from the fixed noise and a grid of real images, to TensorBoard and PNG."""
  variables = sampling.prepare(generator, sampling_variables(state), config)
  grids = {"samples": sampling.make_grid(sampling.sample(generator, variables, fixed_z)),
           "real": sampling.make_grid(real)}
  writer.write_images(step, {k: v[None] for k, v in grids.items()})
  for name, grid in grids.items():
    sampling.save_png(f"{workdir}/samples/{name}_{step:07d}.png", grid)
  logging.info("Grid: %s/samples/samples_%07d.png", workdir, step)


def save_checkpoint(ckpts, state, config, steps_per_epoch: int, nan_hint: str) -> str:
  """Saves the host ``state`` (never a non-finite one); returns its folder."""
  step = int(state.step)
  guards.check_state_finite(state, step, nan_hint, before_raise=ckpts.wait)
  with guards.checkpoint_writes(ckpts, step):
    path = ckpts.save(state, config, {"steps_per_epoch": steps_per_epoch})
  logging.info("Checkpoint: step %d -> %s", step, path)
  return path


def _already_trained(config, start: int, total: int | None) -> bool:
  if total is None or start < total:
    return False
  logging.info("Already trained to step %d (%s); raise num_train_steps or num_epochs to "
               "train on.", start, schedule.describe_length(config, total))
  return True


def _stopped_early(stop: preemption.StopSignal, start: int) -> bool:
  if not stop.should_stop(sync=True):
    return False
  logging.warning("Stopped by %s during start-up, before training step %d: nothing new to "
                  "save. Rerun with the same workdir to %s.", stop.name or "another host",
                  start + 1, f"resume from step {start}" if start else "start")
  return True


def train_and_evaluate(config, workdir: str) -> GANState:
  """Trains the GAN of ``config`` into ``workdir``, resuming from its checkpoints.

  Args:
    config: an ml_collections ConfigDict (every key: dcgan_jax/defaults.py).
    workdir: TensorBoard events, sample grids and checkpoints. A workdir
      already trained to the config's length is left as it is.

  Returns:
    The final host state; on SIGTERM/SIGINT, the state saved where it stopped.
  """
  from clu import metric_writers  # noqa: PLC0415 (TensorFlow: the training loop only)

  from dcgan_jax.metrics import evaluate, fid  # noqa: PLC0415
  chief = jax.process_index() == 0
  nan_hint = (f" Lower the learning rates (lr_d={config.lr_d}, lr_g={config.lr_g})"
              f"{' or train in float32' if config.dtype != 'float32' else ''}.")
  with contextlib.ExitStack() as stack:
    # A signal from here on ends the run cleanly; bad input fails before compiling.
    stop = stack.enter_context(preemption.StopSignal())
    config_lib.validate(config)
    input_pipeline.check_dataset(config.dataset)
    lock = stack.enter_context(workdir_lib.claim(workdir, chief))
    ckpts = stack.enter_context(guards.closing(checkpoints.Checkpoints(
        f"{workdir}/{checkpoints.CHECKPOINT_DIR}", max_to_keep=config.max_to_keep)))
    state, saved = checkpoints.restore_or_init(
        ckpts, create_train_state(config, jax.random.PRNGKey(config.seed)), config)
    start = int(state.step)
    if (_already_trained(config, start, schedule.known_length(config, saved))
        or _stopped_early(stop, start)):
      return state

    inp = input_pipeline.create_input(config, start_step=start)
    plan = schedule.Schedule.of(config, inp.steps_per_epoch)
    if _already_trained(config, start, plan.total):
      return state
    runner = parallel.make_runner(config.parallel)
    train_call = make_train_call(config, runner)
    empty_summary = runner.put_state(summaries.empty(config.loss))
    feed = stack.enter_context(device_input.feed(config, inp, runner, start, plan.total))
    writer = stack.enter_context(guards.closing(metric_writers.create_default_writer(
        workdir, just_logging=not chief)))
    evaluator = best = None
    if chief and config.fid.eval_every:
      evaluator = fid.Evaluator.create(config, workdir)
      # Orbax saves are collective and only the chief scores FID: the best
      # checkpoint is kept by single-process runs.
      if evaluator is not None and jax.process_count() == 1:
        best = stack.enter_context(guards.closing(evaluate.BestFid(workdir)))
    sampler = make_models(config)[0]
    fixed_z = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (config.num_plot, config.nz))
    lock.announce()
    console.print_header(config, workdir, inp, start, plan, evaluator is not None,
                         saved["message"] if saved else "A new run.")
    if _stopped_early(stop, start):
      return state

    t_start, clock = time.perf_counter(), console.Clock(plan.total, config.batch_size)
    pstate, summary = runner.put_state(state), empty_summary
    step, stopping, last_save, fid_planned = start, False, None, evaluator is None
    for step, host, batch in feed:
      pstate, summary = train_call(pstate, summary, batch, feed.images, step - len(host))
      if clock.start_step is None:  # the first call compiled: time from its end
        jax.block_until_ready(pstate)
        clock.start(step)
      due = plan.due(step)
      # Hosts agree on a stop where they sync anyway, at the logging steps.
      stopping = stop.should_stop(sync=step % config.log_every == 0)
      if due or stopping:  # the same steps on every host: all stop together on a NaN
        host_summary = runner.get(summary)
        guards.check_finite(host_summary["nonfinite"], nan_hint, before_raise=ckpts.wait)
      if due.log:
        log_step(writer, step, plan.total, host_summary, clock)
        summary = empty_summary
        if not fid_planned and clock.secs_per_step() is not None:
          plan = plan.with_fid(evaluate.plan_fid(config, evaluator, clock.secs_per_step()))
          fid_planned = True
      host_state = functools.cache(lambda p=pstate: runner.get(p))  # read at most once
      if due.grid and chief:
        write_grids(writer, workdir, step, sampler, host_state(), fixed_z,
                    feed.real_images(host), config)
      if due.fid and evaluator is not None:
        evaluate.write_fid(writer, evaluator, step, sampler, host_state(), best, config)
      if due.save or stopping:
        last_save = save_checkpoint(ckpts, host_state(), config, inp.steps_per_epoch, nan_hint)
      if stopping:
        break

    with guards.checkpoint_writes(ckpts, step):
      ckpts.wait()
    if stopping:
      logging.warning("Stopped by %s after step %d; checkpoint saved to %s. Rerun with the "
                      "same workdir to resume.", stop.name or "another host", step, last_save)
    else:
      logging.info("%s", console.done_line(step, time.perf_counter() - t_start, last_save,
                                           f"{workdir}/samples"))
    if inp.skipped:
      logging.warning("Input: %s.", input_pipeline.format_skipped(inp.skipped, inp.num_files))
    return runner.get(pstate)
