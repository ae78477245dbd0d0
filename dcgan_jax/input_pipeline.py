"""Training images: a folder, a TFDS dataset, or the synthetic faces.

Every path yields host batches of shape (local_batch, S, S, 3), float32 in
[-1, 1], where local_batch = batch_size / jax.process_count() and each host
reads its own shard of the images.

Order. The images of an epoch are visited in a permutation drawn from
(seed, epoch), cut to a whole number of batches (the original's drop_last);
batch k of the run is therefore a pure function of k, so a resumed run that
starts at step k sees exactly the batches it would have seen (``start_step``).

Paths:
  * in memory (``cache=True``, the default, and the synthetic set): a folder
    is decoded once (tf.data, in parallel) into a uint8 array; batches are
    then gathered with numpy. This path itself needs no TensorFlow.
  * streaming (``cache=False``): tf.data decodes every batch from disk.
  * ``tfds:NAME``: a prepared TFDS dataset, split 'train', feature 'image'.

TensorFlow is imported lazily and never sees a GPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class Input:
  """A training input: an endless iterator of host batches."""

  batches: Iterator[np.ndarray]
  num_examples: int       # images in the whole dataset (all hosts)
  steps_per_epoch: int
  description: str


def list_image_files(path: str) -> list[str]:
  """All images below ``path`` (any depth), sorted; a clear error otherwise."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"dataset folder {path!r} does not exist. Put images (.jpg/.jpeg/.png, "
        "any depth) in a folder such as data/face/ and pass "
        "--config.dataset=PATH (see data/README.md), or use "
        "--config.dataset=synthetic.")
  if not os.path.isdir(path):
    raise NotADirectoryError(
        f"dataset {path!r} is a file, not a folder. Pass the folder holding "
        "the images (.jpg/.jpeg/.png, any depth), e.g. data/face.")
  files = []
  for root, _, names in os.walk(path, followlinks=True):
    files.extend(os.path.join(root, n) for n in names
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  files.sort()
  if not files:
    raise ValueError(
        f"no images (.jpg/.jpeg/.png) found below {path!r}. Expected a folder "
        "of images at any depth, e.g. data/face/00001.jpg.")
  return files


def to_float(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images_uint8.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


def epoch_order(num: int, batch: int, seed: int, epoch: int) -> np.ndarray:
  """Indices visited in ``epoch``: a permutation cut to whole batches."""
  perm = np.random.default_rng([seed, epoch]).permutation(num)
  return perm[: (num // batch) * batch]


def index_batches(num: int, batch: int, seed: int,
                  start_step: int = 0) -> Iterator[np.ndarray]:
  """Endless index batches; batch k depends only on k (exact resume)."""
  steps_per_epoch = num // batch
  epoch, offset = divmod(start_step, steps_per_epoch)
  while True:
    order = epoch_order(num, batch, seed, epoch).reshape(steps_per_epoch, batch)
    yield from order[offset:]
    epoch, offset = epoch + 1, 0


def array_batches(images: np.ndarray, batch: int, seed: int,
                  start_step: int = 0) -> Iterator[np.ndarray]:
  """The in-memory path: float batches gathered from a uint8 NHWC array."""
  for idx in index_batches(len(images), batch, seed, start_step):
    # Sorted gathers read memory in order; the order within a batch is
    # irrelevant to the step (BatchNorm and the losses are permutation-free).
    yield to_float(images[np.sort(idx)])


def _tf():
  import tensorflow as tf  # noqa: PLC0415 (only the data paths need it)
  tf.config.set_visible_devices([], "GPU")
  return tf


def _decode_and_crop(tf, data, image_size: int):
  """Encoded bytes -> (S, S, 3) uint8: RGB, shorter side resized, center crop."""
  img = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                           expand_animations=False)
  return _resize_and_crop(tf, img, image_size)


def _resize_and_crop(tf, img, image_size: int):
  h, w = tf.shape(img)[0], tf.shape(img)[1]
  scale = image_size / tf.cast(tf.minimum(h, w), tf.float32)
  new_h = tf.maximum(image_size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
  new_w = tf.maximum(image_size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))

  def resize():
    r = tf.image.resize(img, (new_h, new_w), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(r), 0, 255), tf.uint8)

  img = tf.cond(tf.logical_and(tf.equal(h, new_h), tf.equal(w, new_w)),
                lambda: img, resize)
  top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
  img = img[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(img, (image_size, image_size, 3))


def load_images(files: Sequence[str], image_size: int) -> np.ndarray:
  """Decodes ``files`` into one (N, S, S, 3) uint8 array (parallel tf.data)."""
  tf = _tf()
  ds = tf.data.Dataset.from_tensor_slices(list(files))
  ds = ds.map(lambda f: _decode_and_crop(tf, tf.io.read_file(f), image_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  out = np.empty((len(files), image_size, image_size, 3), np.uint8)
  i = 0
  for chunk in ds.batch(256).as_numpy_iterator():
    out[i:i + len(chunk)] = chunk
    i += len(chunk)
  return out


def _stream_batches(files: Sequence[str], image_size: int, batch: int,
                    seed: int, start_step: int) -> Iterator[np.ndarray]:
  """The streaming path: tf.data decodes each batch from disk."""
  tf = _tf()
  paths = tf.constant(list(files))
  idx = tf.data.Dataset.from_generator(
      lambda: index_batches(len(files), batch, seed, start_step),
      output_signature=tf.TensorSpec((batch,), tf.int64))
  ds = idx.unbatch().map(
      lambda i: _decode_and_crop(tf, tf.io.read_file(paths[i]), image_size),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  for b in ds.as_numpy_iterator():
    yield to_float(b)


def _tfds_images(name: str, image_size: int, process_index: int,
                 process_count: int) -> np.ndarray:
  tf = _tf()
  import tensorflow_datasets as tfds  # noqa: PLC0415
  split = tfds.split_for_jax_process("train", process_index=process_index,
                                     process_count=process_count)
  ds = tfds.load(name, split=split, shuffle_files=False)
  ds = ds.map(lambda ex: _resize_and_crop(tf, _rgb(tf, ex["image"]), image_size),
              num_parallel_calls=tf.data.AUTOTUNE)
  return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def _rgb(tf, img):
  img = tf.image.convert_image_dtype(img, tf.uint8)
  c = tf.shape(img)[-1]
  return tf.case([(tf.equal(c, 1), lambda: tf.image.grayscale_to_rgb(img)),
                  (tf.equal(c, 4), lambda: img[..., :3])], default=lambda: img)


def create_input(config, *, start_step: int = 0, process_index: int | None = None,
                 process_count: int | None = None) -> Input:
  """Builds this host's training input from ``config``.

  Args:
    config: needs dataset, image_size, batch_size, seed, cache, synthetic_size.
    start_step: the first batch to yield (resume).
    process_index: this host (default ``jax.process_index()``).
    process_count: number of hosts (default ``jax.process_count()``).

  Returns:
    An ``Input`` with host batches of batch_size / process_count images.
  """
  if process_index is None or process_count is None:
    import jax  # noqa: PLC0415
    process_index, process_count = jax.process_index(), jax.process_count()
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible "
                     f"by the number of processes ({process_count}).")
  batch = config.batch_size // process_count
  size, seed, dataset = config.image_size, config.seed, config.dataset

  if dataset == "synthetic":
    from dcgan_jax import synthetic  # noqa: PLC0415
    images = synthetic.make_faces(config.synthetic_size, size, seed=1234)
    total, images = len(images), images[process_index::process_count]
    desc = f"{total} synthetic faces"
  elif dataset.startswith("tfds:"):
    images = _tfds_images(dataset[5:], size, process_index, process_count)
    total = len(images) * process_count
    desc = f"TFDS {dataset[5:]!r}"
  else:
    files = list_image_files(dataset)
    # Every host keeps the same number of images, so all take the same
    # number of steps per epoch.
    total = len(files)
    files = files[process_index::process_count][: total // process_count]
    desc = f"{total} images in {dataset!r}"
    _check_steps(len(files) // batch, total, config.batch_size, desc)
    if not config.cache:
      return Input(_stream_batches(files, size, batch, seed, start_step),
                   total, len(files) // batch, desc + " (streamed)")
    images = load_images(files, size)

  images = images[: total // process_count]
  steps = len(images) // batch
  _check_steps(steps, total, config.batch_size, desc)
  return Input(array_batches(images, batch, seed, start_step), total, steps,
               desc + " (in memory)")


def _check_steps(steps: int, total: int, batch_size: int, desc: str):
  if steps < 1:
    raise ValueError(f"{desc}: fewer images ({total}) than config.batch_size="
                     f"{batch_size}; lower the batch size or add images.")
