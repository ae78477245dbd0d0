"""dcgan_jax entry point.

    python main.py --config configs/anime.py --workdir runs/anime \
        [--mode=train|generate|interpolate] [--config.KEY=VALUE ...]
"""

from absl import app, flags, logging
from ml_collections import config_flags

from dcgan_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where summaries, samples and checkpoints go.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.",
                                lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "generate", "interpolate"],
                  "train (resumes from WORKDIR's checkpoints), or write WORKDIR/result.png "
                  "(generate) / WORKDIR/interpolate.png from the trained model.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("Config:\n%s", FLAGS.config)
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    from dcgan_jax import generate  # noqa: PLC0415
    generate.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
  app.run(main)
