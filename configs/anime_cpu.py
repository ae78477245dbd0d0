"""Anime faces from your folder in half an hour of a laptop's CPU.

    python main.py --config configs/anime_cpu.py --workdir runs/anime_cpu

The original's nets and losses at quarter width (ngf = ndf = 16, about 15x less
work per image than full width), batch 64, for 15,000 steps: 960,000 images, 160
epochs of 6,000 faces, where the original at full width sees about 200,000 in the
same time. Over that many epochs D would learn the folder by heart, so both nets
see the images through DiffAugment (colour and translation), and the grids,
generate and eval use an EMA of G whose horizon grows with the images seen
(StyleGAN2-ADA's: a half-life of 10k images, at most 5% of training).

Chosen by FID at equal wall time over seeds with ``bench/quality.py``; the rows
and their commands are in bench/README.md ("Faces on a laptop").
"""

import os

from dcgan_jax import config_lib


def get_config():
  c = config_lib.load(os.path.join(os.path.dirname(__file__), "anime.py"))
  c.ngf = 16
  c.ndf = 16
  c.batch_size = 64
  c.num_train_steps = 15000
  c.diffaugment = "color,translation"
  c.ema_kimg = 10.0
  c.log_every = 100
  c.plot_every = 1500
  c.save_every_steps = 1500
  c.fid.eval_every = 0         # FID on CPU costs minutes: run --mode=eval after
  return c
