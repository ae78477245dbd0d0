import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import COMPILATIONS, tiny_config, train_call

from dcgan_jax import summaries
from dcgan_jax.data import input_pipeline
from dcgan_jax.state import create_train_state

D_NAMES, G_NAMES = {"loss_d", "d_real", "d_fake"}, {"loss_g", "d_fake_g"}


@functools.cache
def _setup(d_every: int = 1, g_every: int = 1):
  config = tiny_config(d_every=d_every, g_every=g_every)
  state = create_train_state(config, jax.random.PRNGKey(0))
  batch = next(input_pipeline.create_input(config).batches)
  return state, train_call(config), batch


def _calls(step, state, batches, per_call: int = 1):
  """Runs ``batches`` through ``step`` (``train_call``'s), ``per_call`` per call.

  Returns:
    (the final host state, the scalars read after each call).
  """
  runner, call, empty = step
  pstate, logs = runner.put_state(state), []
  for i in range(0, len(batches), per_call):
    pstate, summary = call(pstate, empty, runner.put_batch(np.stack(batches[i:i + per_call])),
                           None, int(state.step) + i)
    logs.append(summaries.host_scalars(runner.get(summary)))
  return runner.get(pstate), logs


def _max_abs_diff(a, b):
  return max(float(jnp.abs(x - y).max()) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def test_step_updates_params_stats_and_reports_finite_losses():
  state, step, batch = _setup()
  new, (m,) = _calls(step, state, [batch])
  assert int(new.step) == 1
  for net in ("g", "d"):
    old_n, new_n = getattr(state, net), getattr(new, net)
    assert _max_abs_diff(old_n.params, new_n.params) > 0
    assert _max_abs_diff(old_n.batch_stats, new_n.batch_stats) > 0
    assert int(new_n.opt_state[0].count) == 1 and int(new_n.step) == 1
  assert set(m) == D_NAMES | G_NAMES
  assert all(np.isfinite(v) for v in m.values())
  # At init D is undecided: its loss is near 2 log 2, G's near log 2.
  assert 0.9 < m["loss_d"] < 2.5 and 0.2 < m["loss_g"] < 2.0


def test_g_only_and_d_only_steps_leave_the_other_net_alone():
  # At step 1, g_every=1000 skips G and d_every=1000 skips D.
  state, step, batch = _setup(g_every=1000)
  at_1 = state.replace(step=jnp.int32(1))
  d_only, (m,) = _calls(step, at_1, [batch])
  assert set(m) == D_NAMES
  assert _max_abs_diff(state.g.params, d_only.g.params) == 0
  assert int(d_only.g.opt_state[0].count) == 0 and int(d_only.g.step) == 0
  assert int(d_only.d.step) == 1
  state, step, batch = _setup(d_every=1000)
  g_only, (m,) = _calls(step, at_1, [batch])
  assert set(m) == G_NAMES
  assert _max_abs_diff(state.d.params, g_only.d.params) == 0
  assert int(g_only.d.opt_state[0].count) == 0 and int(g_only.g.step) == 1


def test_discriminator_loss_falls_on_a_fixed_batch():
  state, step, batch = _setup(g_every=1000)  # steps 1..8 update D only
  _, logs = _calls(step, state.replace(step=jnp.int32(1)), [batch] * 8)
  losses = [m["loss_d"] for m in logs]
  assert all(set(m) == D_NAMES for m in logs)
  assert losses[-1] < 0.8 * losses[0], losses


def test_step_is_deterministic():
  state, step, batch = _setup()
  a, _ = _calls(step, state, [batch])
  b, _ = _calls(step, state, [batch])
  assert _max_abs_diff(a, b) == 0


@pytest.mark.parametrize(  # 1000: G at step 0 only, a traced cond
    "g_every", [1, pytest.param(1000, marks=pytest.mark.slow)])
def test_k_steps_per_call_match_one_per_call(g_every):
  state, step, _ = _setup(g_every=g_every)
  inp = input_pipeline.create_input(tiny_config())
  batches = [next(inp.batches) for _ in range(8)]
  one, logs_one = _calls(step, state, batches, per_call=1)
  four, logs_four = _calls(step, state, batches, per_call=4)
  # The same iterations; XLA compiles the unrolled call's arithmetic with other
  # rounding (1.1e-6 here after 8 steps; a skipped or repeated update is ~1e-3).
  assert _max_abs_diff(one, four) < 1e-5
  assert int(four.step) == 8 and int(four.g.step) == (8 if g_every == 1 else 1)
  # The summary of a call of four is the mean of the four single steps.
  for k in logs_four[0]:
    ran = [m[k] for m in logs_one[:4] if k in m]
    assert logs_four[0][k] == pytest.approx(np.mean(ran), rel=1e-5)


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_the_step_compiles_once(kind):
  # A state placed under another pmap axis name than the step's own used to
  # make the second step compile again (and the first logged img/s wrong);
  # a batch placed by a new pmap per call compiled that pmap every step.
  config = tiny_config(parallel=kind)
  runner, train_fn, summary = train_call(config)
  state = runner.put_state(create_train_state(config, jax.random.PRNGKey(0)))
  batches = input_pipeline.create_input(config).batches

  def call(state, summary):
    batch = runner.put_batch(next(batches)[None])  # a new batch every step
    return train_fn(state, summary, batch, None, 0)

  before = len(COMPILATIONS)
  state, summary = call(state, summary)
  jax.block_until_ready(state)
  first = len(COMPILATIONS)
  for _ in range(3):
    state, summary = call(state, summary)
  jax.block_until_ready(state)
  assert first > before
  assert len(COMPILATIONS) == first
