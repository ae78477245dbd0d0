"""Subprocess side of tests/test_distributed.py (device counts are fixed at JAX start).

    python tests/dist_worker.py steps OUT.npz
        one process: the tiny model's state after each of 3 steps (D+G, D, D+G:
        g_every=2) on a global batch of 32, for both wrappers, plus one pmap
        step with per-device BatchNorm statistics.
    python tests/dist_worker.py cluster OUT_PREFIX WORKDIR ADDR NPROC PID KIND
        one process of a cluster: trains the tiny demo for 4 steps with
        train_and_evaluate (checkpoint at step 4 in WORKDIR) and saves the
        final state to OUT_PREFIX{PID}.npz.
    python tests/dist_worker.py resume OUT.npz WORKDIR KIND
        one process: the state restored from WORKDIR's latest checkpoint
        ('restored/...') and after resuming training to step 6 ('resumed/...').
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import numpy as np  # noqa: E402
from conftest import tiny_config, train_call  # noqa: E402

from dcgan_jax import parallel, train  # noqa: E402
from dcgan_jax.data import input_pipeline  # noqa: E402
from dcgan_jax.state import create_train_state  # noqa: E402


def flat(state) -> dict:
  """The state's arrays as {path: numpy array}."""
  leaves = jax.tree_util.tree_leaves_with_path(
      (state.step, state.g.params, state.g.batch_stats, state.d.params,
       state.d.batch_stats, state.g.opt_state, state.d.opt_state))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def steps(out: str):
  # DCGAN init: under the default PyTorch init the 1- and 8-device parameters
  # differed by 1e-4 (~lr/2) after one step (measured), most likely parameters
  # with float-noise gradients that Adam's first step scales to +-lr; with this
  # init they agree to 2e-6.
  config = tiny_config(batch_size=32, g_every=2, init_scheme="dcgan")
  init = create_train_state(config, jax.random.PRNGKey(0))
  batches = input_pipeline.create_input(config).batches
  batches = [next(batches) for _ in range(3)]
  result = {}
  for kind, sync in (("pmap", True), ("shard_map", True), ("pmap", False)):
    runner, call, empty = train_call(tiny_config(batch_size=32, g_every=2, init_scheme="dcgan",
                                                 parallel=kind, sync_batch_stats=sync))
    state = runner.put_state(init)
    # Per-device statistics: one step shows the difference.
    for i, batch in enumerate(batches if sync else batches[:1]):
      state, _ = call(state, empty, runner.put_batch(batch[None]), None, i)
      name = f"{kind}{'' if sync else '_nosync'}/{i + 1}"
      result.update({f"{name}/{k}": v for k, v in flat(runner.get(state)).items()})
  np.savez(out, **result)


def cluster(prefix: str, workdir: str, addr: str, nproc: str, pid: str, kind: str):
  assert parallel.initialize_distributed("auto", addr, int(nproc), int(pid))
  assert jax.process_count() == int(nproc)
  state = train.train_and_evaluate(_cluster_config(kind, 4), workdir)
  np.savez(f"{prefix}{pid}.npz", **flat(state),
           devices=np.array([jax.device_count(), jax.local_device_count()]))


def _cluster_config(kind: str, steps: int):
  return tiny_config(parallel=kind, num_train_steps=steps, plot_every=4)


def resume(out: str, workdir: str, kind: str):
  from dcgan_jax import checkpoints  # noqa: PLC0415
  config = _cluster_config(kind, 6)
  ckpts = checkpoints.Checkpoints(os.path.join(workdir, checkpoints.CHECKPOINT_DIR),
                                  read_only=True)
  restored = ckpts.restore(create_train_state(config, jax.random.PRNGKey(0)), 4)
  ckpts.close()
  resumed = train.train_and_evaluate(config, workdir)
  np.savez(out, **{f"restored/{k}": v for k, v in flat(restored).items()},
           **{f"resumed/{k}": v for k, v in flat(resumed).items()})


if __name__ == "__main__":
  {"steps": steps, "cluster": cluster, "resume": resume}[sys.argv[1]](*sys.argv[2:])
