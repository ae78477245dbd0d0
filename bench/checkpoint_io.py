"""Size on disk and save / restore times of a checkpoint (a fresh state, no training).

    python bench/checkpoint_io.py --config configs/anime.py [--dir /tmp/ckpt-bench]
"""

import os
import shutil
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dcgan_jax import checkpoints  # noqa: E402
from dcgan_jax.state import create_train_state  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/anime.py", "A configs/*.py file.")
flags.DEFINE_string("dir", "/tmp/ckpt-bench", "Scratch folder (emptied first).")
flags.DEFINE_integer("repeats", 3, "Saves and restores timed.")
flags.DEFINE_bool("trained_like", True, "Fill Adam's moments (zeros at init, which compress "
                  "to nothing) with random values, as after training.")


def _size(path):
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main(_):
  config = FLAGS.config
  shutil.rmtree(FLAGS.dir, ignore_errors=True)
  state = create_train_state(config, jax.random.PRNGKey(0))
  if FLAGS.trained_like:
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
    noise = lambda x: (jax.random.normal(next(keys), x.shape, x.dtype) * 1e-3
                       if x.dtype == jax.numpy.float32 and x.ndim else x)
    state = state.replace(g=state.g.replace(opt_state=jax.tree_util.tree_map(
        noise, state.g.opt_state)), d=state.d.replace(opt_state=jax.tree_util.tree_map(
            noise, state.d.opt_state)))
  leaves = jax.tree_util.tree_leaves(state)
  n_arrays, n_values = len(leaves), sum(x.size for x in leaves)
  ckpts = checkpoints.Checkpoints(FLAGS.dir)
  saves, blocking = [], []
  for i in range(FLAGS.repeats):
    t0 = time.perf_counter()
    ckpts.save(state.replace(step=state.step + i), config)
    t1 = time.perf_counter()
    ckpts.wait()
    blocking.append(t1 - t0)
    saves.append(time.perf_counter() - t0)
  restores = []
  for i in range(FLAGS.repeats):
    t0 = time.perf_counter()
    restored = ckpts.restore(state, i)
    jax.block_until_ready(restored)
    restores.append(time.perf_counter() - t0)
  ckpts.close()
  size = _size(os.path.join(FLAGS.dir, "0"))
  print(f"config ngf={config.ngf} ndf={config.ndf} nz={config.nz}: {n_arrays} arrays, "
        f"{n_values:,} values ({4 * n_values / 2**20:.1f} MiB as float32)")
  print(f"checkpoint on disk: {size / 2**20:.1f} MiB ({size:,} bytes)")
  print(f"save (to disk): min {min(saves):.2f}s of {[round(s, 2) for s in saves]}; "
        f"training blocked for min {min(blocking):.2f}s")
  print(f"restore: min {min(restores):.2f}s of {[round(s, 2) for s in restores]}")


if __name__ == "__main__":
  app.run(main)
