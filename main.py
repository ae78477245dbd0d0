"""dcgan_jax entry point.

    python main.py --config configs/anime.py --workdir runs/anime \
        [--mode=train|eval|generate|interpolate|export_torch] [--config.KEY=VALUE ...]
        [--verbose]

On a cluster, start one process per host (docs/distributed.md).
"""

from dcgan_jax import preemption

preemption.catch_early()  # a SIGTERM while importing still ends cleanly

import sys  # noqa: E402

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcgan_jax import console, cpu_flags, errors, fs, parallel, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where summaries, samples and checkpoints go.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.",
                                lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "eval", "generate", "interpolate", "export_torch"],
                  "train (resumes from WORKDIR's checkpoints); eval: FID/KID of the newest "
                  "checkpoint (fid=/kid= lines); generate / interpolate: WORKDIR/result.png "
                  "/ interpolate.png; export_torch: WORKDIR/netg.pth and netd.pth for the "
                  "PyTorch original.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool("verbose", False, "Show every library's log lines, the whole config, "
                  "and the traceback of an error.")
flags.DEFINE_enum("distributed", "auto", parallel.DISTRIBUTED_MODES,
                  "jax.distributed.initialize(): 'auto' when the flags below are "
                  "given or a TPU pod / SLURM / Open MPI job is detected.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 (multi-host runs outside TPU/SLURM).")
flags.DEFINE_integer("num_processes", None, "Processes (hosts) in the job.")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def run(config, workdir: str, mode: str) -> None:
  """Runs one ``--mode`` of the program."""
  if mode == "train":
    train.train_and_evaluate(config, workdir)
    return
  preemption.release_early()  # nothing to save: signals act as usual
  if mode == "eval":
    from dcgan_jax.metrics import evaluate  # noqa: PLC0415
    evaluate.main(config, workdir)
  else:
    from dcgan_jax.samples import generate  # noqa: PLC0415
    generate.run(config, workdir, mode)


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
  config = FLAGS.config
  config.dataset = fs.expand(config.dataset)
  try:
    run(config, fs.expand(FLAGS.workdir), FLAGS.mode)
  except (errors.UserError, errors.RunStopped) as e:
    # A person's mistake, or a stop the message explains: one line, no traceback.
    if FLAGS.verbose:
      logging.exception("%s", type(e).__name__)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main)
