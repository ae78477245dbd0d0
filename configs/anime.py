"""The original AnimeGAN recipe (chenyuntc/pytorch-book, 2018 blog version).

    python main.py --config configs/anime.py --workdir runs/anime \
        --config.dataset=data/face --config.batch_size=64

Every key and what it means: ``dcgan_jax/defaults.py``, whose values are this
recipe; the recipe's own numbers are spelled out below.
"""

from dcgan_jax import defaults


def get_config():
  c = defaults.get_config()
  c.image_size = 96
  c.batch_size = 256
  c.nz = 100
  c.ngf = c.ndf = 64
  c.lr_g = c.lr_d = 2e-4       # Adam(2e-4, betas (0.5, 0.999)) for both nets
  c.beta1, c.beta2 = 0.5, 0.999
  c.d_every = c.g_every = 1    # D and G every step (the book's first version: g_every 5)
  c.num_epochs = 200
  c.gen_search_num = 512       # generate: draw 512 faces, keep the 64 D likes best
  c.gen_num = 64
  # The switches beyond the original (docs/training.md), all off: the original's
  # loss, G's ConvTransposes, D with BatchNorm and without spectral norm, no
  # augmentation, no R1, no EMA of G, sampling with the running BatchNorm averages.
  c.loss = "bce"
  c.g_upsample = "transpose"
  c.d_spectral_norm = False
  c.d_batch_norm = True
  c.diffaugment = ""
  c.r1_gamma = 0.0
  c.ema_decay = c.ema_kimg = 0.0
  c.standing_stats = 0
  return c
