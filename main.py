"""dcgan_jax entry point.

    python main.py --config configs/anime.py --workdir runs/anime \
        [--config.KEY=VALUE ...]
"""

from absl import app, flags, logging
from ml_collections import config_flags

from dcgan_jax import cpu_flags, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where summaries, samples and checkpoints go.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cpu_flags.use_fast_cpu_flags()  # before the first computation starts XLA
  logging.info("Config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
