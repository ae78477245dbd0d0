import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax import monitoring

from dcgan_jax import input_pipeline, parallel, train


@functools.cache
def _setup():
  config = tiny_config()
  state = train.create_train_state(config, jax.random.PRNGKey(0))
  g, d = train.make_models(config, parallel.AXIS)
  step = parallel.pmap_step(
      lambda s, x, do_d, do_g: train.train_step(s, x, do_d, do_g, generator=g,
                                               discriminator=d, nz=config.nz),
      static_argnums=(2, 3))
  batch = next(input_pipeline.create_input(config).batches)
  return config, state, step, parallel.shard(batch)


def _max_abs_diff(a, b):
  return max(float(jnp.abs(x - y).max()) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def test_step_updates_params_stats_and_reports_finite_losses():
  _, state, step, batch = _setup()
  new, out = step(parallel.replicate(state), batch, True, True)
  new = parallel.unreplicate(new)
  assert int(new.step) == 1
  for net in ("g", "d"):
    old_n, new_n = getattr(state, net), getattr(new, net)
    assert _max_abs_diff(old_n.params, new_n.params) > 0
    assert _max_abs_diff(old_n.batch_stats, new_n.batch_stats) > 0
    assert int(new_n.opt_state[0].count) == 1
  m = {k: float(v) for c in parallel.unreplicate(out).values() for k, v in c.compute().items()}
  assert set(m) == {"loss_d", "d_real", "d_fake", "loss_g", "d_fake_g"}
  assert all(np.isfinite(v) for v in m.values())
  # At init D is undecided: its loss is near 2 log 2, G's near log 2.
  assert 0.9 < m["loss_d"] < 2.5 and 0.2 < m["loss_g"] < 2.0


def test_g_only_and_d_only_steps_leave_the_other_net_alone():
  _, state, step, batch = _setup()
  d_only, out = step(parallel.replicate(state), batch, True, False)
  d_only = parallel.unreplicate(d_only)
  assert set(out) == {"d"}
  assert _max_abs_diff(state.g.params, d_only.g.params) == 0
  assert int(d_only.g.opt_state[0].count) == 0
  g_only, out = step(parallel.replicate(state), batch, False, True)
  g_only = parallel.unreplicate(g_only)
  assert set(out) == {"g"}
  assert _max_abs_diff(state.d.params, g_only.d.params) == 0


def test_discriminator_loss_falls_on_a_fixed_batch():
  _, state, step, batch = _setup()
  s = parallel.replicate(state)
  losses = []
  for _ in range(8):
    s, out = step(s, batch, True, False)
    losses.append(float(parallel.unreplicate(out)["d"].compute()["loss_d"]))
  assert losses[-1] < 0.8 * losses[0], losses


def test_step_is_deterministic():
  _, state, step, batch = _setup()
  a = parallel.unreplicate(step(parallel.replicate(state), batch, True, True)[0])
  b = parallel.unreplicate(step(parallel.replicate(state), batch, True, True)[0])
  assert _max_abs_diff(a, b) == 0


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_the_step_compiles_once(kind):
  # A state placed under another pmap axis name than the step's own used to
  # make the second step compile again (and the first logged img/s wrong).
  compiles = []
  monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compiles.append(name) if "backend_compile" in name else None)
  config = tiny_config()
  g, d = train.make_models(config, parallel.AXIS)
  runner = parallel.make_runner(functools.partial(
      train.train_step, generator=g, discriminator=d, nz=config.nz), kind)
  state = runner.put_state(train.create_train_state(config, jax.random.PRNGKey(0)))
  batch = runner.put_batch(next(input_pipeline.create_input(config).batches))
  state, _ = runner.step(state, batch, True, True)
  jax.block_until_ready(state)
  first = len(compiles)
  for _ in range(3):
    state, _ = runner.step(state, batch, True, True)
  jax.block_until_ready(state)
  assert first >= 1
  assert len(compiles) == first
