"""dcgan_jax entry point.

    python main.py --config configs/anime.py --workdir runs/anime \
        [--mode=train|eval|generate|interpolate] [--config.KEY=VALUE ...] [--verbose]

On a cluster, start one process per host (README: "Many devices, many hosts"):
TPU pods, SLURM and Open MPI are detected; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""

from dcgan_jax import preemption

preemption.catch_early()  # a SIGTERM while importing still ends cleanly

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcgan_jax import console, cpu_flags, parallel, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where summaries, samples and checkpoints go.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.",
                                lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "eval", "generate", "interpolate"],
                  "train (resumes from WORKDIR's checkpoints); eval: FID/KID of the latest "
                  "checkpoint (fid=/kid= lines); or write WORKDIR/result.png "
                  "(generate) / WORKDIR/interpolate.png from the trained model.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool("verbose", False, "Show every library's log lines (orbax, TensorFlow, "
                  "JAX) and the whole config, in absl's format.")
flags.DEFINE_enum("distributed", "auto", parallel.DISTRIBUTED_MODES,
                  "jax.distributed.initialize(): 'auto' when the flags below are "
                  "given or a TPU pod / SLURM / Open MPI job is detected.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 (multi-host runs outside TPU/SLURM).")
flags.DEFINE_integer("num_processes", None, "Processes (hosts) in the job.")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.quiet_libraries(FLAGS.verbose)  # before anything imports TensorFlow
  cpu_flags.use_fast_cpu_flags()  # before the first computation starts XLA
  if parallel.initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address,
                                     FLAGS.num_processes, FLAGS.process_id):
    logging.info("Distributed: process %d of %d.", jax.process_index(),
                 jax.process_count())
  if FLAGS.verbose:
    logging.info("Config:\n%s", FLAGS.config)
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    return
  preemption.release_early()  # nothing to save: signals act as usual
  if FLAGS.mode == "eval":
    from dcgan_jax.metrics import evaluate  # noqa: PLC0415
    evaluate.main(FLAGS.config, FLAGS.workdir)
  else:
    from dcgan_jax.samples import generate  # noqa: PLC0415
    generate.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
  app.run(main)
