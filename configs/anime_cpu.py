"""Anime faces from your folder in half an hour of a laptop's CPU.

    python main.py --config configs/anime_cpu.py --workdir runs/anime_cpu

The original's nets and losses at quarter width (ngf = ndf = 16), batch 64, for
10,000 steps: 640,000 images, about 26 minutes on 2 cores (~430 img/s), where
the original at full width sees about 200,000 in 30. That is over 100 epochs of
a few thousand faces, enough for D to learn them by heart, so both nets see the
images through DiffAugment (colour and translation); the grids, generate and
eval use an EMA of G whose horizon grows with the images seen (StyleGAN2-ADA's:
a half-life of 10k images, at most 5% of training).

Provisional: with one seed, DiffAugment scored worse than none at width 16, so
the recipe is being re-chosen over 3 seeds with ``bench/quality.py``; the rows
and their commands are in bench/README.md ("Faces on a laptop").
"""

import os

from dcgan_jax import config_lib


def get_config():
  c = config_lib.load(os.path.join(os.path.dirname(__file__), "anime.py"))
  c.ngf = 16
  c.ndf = 16
  c.batch_size = 64
  c.num_train_steps = 10000
  c.diffaugment = "color,translation"
  c.ema_kimg = 10.0
  c.log_every = 100
  c.plot_every = 1000
  c.save_every_steps = 2000
  c.fid.eval_every = 0         # FID on CPU costs minutes: run --mode=eval after
  return c
