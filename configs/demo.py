"""The embedded demo: a quarter-width DCGAN on procedural faces, a few CPU minutes.

    python main.py --config configs/demo.py --workdir runs/demo

Same nets and step as configs/anime.py at ngf = ndf = 16 and batch 32, so 1,500
steps fit in a few minutes on 2 CPU cores. The discriminator learns 5x slower
than the generator (lr_d 1e-4, lr_g 5e-4): at the original's equal rates a net
this small lets D win outright on the flat-coloured faces within ~200 steps and
G stays at grey noise (measured here); with these rates faces (head, hair, two
eyes, a mouth) appear by step ~750 and are clear at 1,500.
"""

import os

from dcgan_jax import config_lib


def get_config():
  c = config_lib.load(os.path.join(os.path.dirname(__file__), "anime.py"))
  c.dataset = "synthetic"
  c.synthetic_size = 2048
  c.ngf = 16
  c.ndf = 16
  c.batch_size = 32
  c.lr_g = 5e-4
  c.lr_d = 1e-4
  c.num_train_steps = 1500
  c.log_every = 50
  c.plot_every = 250
  c.save_every_steps = 500
  c.fid.eval_every = 0         # FID on CPU is slow: run --mode=eval instead
  return c
