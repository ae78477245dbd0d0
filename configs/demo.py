"""The embedded demo: a half-width DCGAN on procedural faces, a few CPU minutes.

    python main.py --config configs/demo.py --workdir runs/demo
"""

from configs import anime


def get_config():
  c = anime.get_config()
  c.dataset = "synthetic"
  c.synthetic_size = 2048
  c.ngf = 32
  c.ndf = 32
  c.batch_size = 64
  c.num_epochs = 10
  c.log_every = 20
  c.plot_every = 100
  c.fid.eval_every = 0         # FID on CPU is slow: run --mode=eval instead
  return c
