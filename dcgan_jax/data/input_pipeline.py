"""Training images from a folder, TFDS or the synthetic faces: the one place that knows them.

Every source yields host batches (batch_size / process_count, S, S, 3) of
float32 in [-1, 1], each host reading its own shard. An epoch visits a
permutation drawn from (seed, epoch), cut to whole batches, so batch k is a
pure function of k and a resumed run sees the batches it would have seen.

Folders are probed file by file (``probe_image``: the header only); what
fails to probe or decode is skipped and named in one warning. In memory
(``cache=True``, synthetic, TFDS) the images are decoded once to a uint8
array; streamed (``cache=False``), tf.data decodes each batch and a file that
fails to decode is replaced by another image of its batch. TensorFlow is
imported only by the paths that decode, and never sees a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import logging

from dcgan_jax import fs
from dcgan_jax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# What tf.io.decode_image reads (Pillow's names); other data is skipped.
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
# Larger images are skipped: a damaged header can claim 60000x60000 pixels,
# and decoding what it claims would take gigabytes.
MAX_PIXELS = 1 << 26
SKIPPED_NAMES_SHOWN = 5
SYNTHETIC_SEED = 1234  # the synthetic faces are the same set in every run


def source(dataset: str) -> str:
  """The kind of ``config.dataset``: 'synthetic', 'tfds' ('tfds:NAME') or 'folder'."""
  if dataset == "synthetic":
    return "synthetic"
  return "tfds" if dataset.startswith("tfds:") else "folder"


@dataclasses.dataclass
class Input:
  """This host's training input: an endless iterator of host batches, and what it read."""

  batches: Iterator[np.ndarray]
  num_examples: int       # images in the whole dataset (all hosts)
  steps_per_epoch: int
  description: str
  # (path, reason); streaming appends the files that fail to decode as it meets them.
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  num_files: int = 0      # files this host listed, skipped ones included
  # uint8 (N, S, S, 3) images of this host that ``batches`` gathers from; None streamed.
  images: np.ndarray | None = None


def list_image_files(path: str) -> list[str]:
  """All images below ``path`` (any depth, a local folder or a URL), sorted; a clear error
  otherwise."""
  folder = fs.path(path, "dataset")
  try:
    exists = folder.exists()
  except Exception as e:  # noqa: BLE001 (each filesystem raises its own kinds)
    raise DataError(f"dataset {path!r} cannot be read ({fs.unreachable(path, e)}).") from e
  if not exists:
    raise DataError(
        f"dataset folder {path!r} does not exist. Put images (.jpg/.jpeg/.png, "
        "any depth) in a folder such as data/face/ and pass "
        "--config.dataset=PATH (see data/README.md), or use "
        "--config.dataset=synthetic.")
  if not folder.is_dir():
    raise DataError(
        f"dataset {path!r} is a file, not a folder. Pass the folder holding "
        "the images (.jpg/.jpeg/.png, any depth), e.g. data/face.")
  files = []
  if fs.is_remote(path):  # named from the URL given, whatever the filesystem calls them
    top = str(folder).rstrip("/")
    walk = ((path.rstrip("/") + str(root)[len(top):], names) for root, _, names in folder.walk())
  else:
    walk = ((root, names) for root, _, names in os.walk(path, followlinks=True))
  for root, names in walk:
    files.extend(f"{root}/{n}" for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
  files.sort()
  if not files:
    raise DataError(
        f"no images (.jpg/.jpeg/.png) found below {path!r}. Expected a folder "
        "of images at any depth, e.g. data/face/00001.jpg.")
  return files


def probe_image(path: str) -> str | None:
  """Cheap check that ``path`` can be decoded: its header only, no pixels.

  Returns:
    None for a regular, non-empty JPEG/PNG/GIF/BMP/WebP file of at most
    ``MAX_PIXELS`` pixels, else why it is skipped (a short phrase).
  """
  if fs.is_remote(path):  # object stores hold plain files only
    return _probe_header(path)
  try:
    st = os.stat(path)
  except OSError as e:
    return "dangling symlink" if os.path.islink(path) else f"cannot stat: {e.strerror}"
  if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever
    return "not a regular file"
  if st.st_size == 0:
    return "empty file (0 bytes)"
  return _probe_header(path)


def _probe_header(path: str) -> str | None:
  from PIL import Image  # noqa: PLC0415 (only folders need Pillow)
  try:
    with fs.path(path).open("rb") if fs.is_remote(path) else open(path, "rb") as fh:
      head = fh.read(64)
      fh.seek(0)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(fh, formats=DECODABLE_FORMATS) as im:
          w, h = im.size
  except OSError as e:
    if e.errno is not None:  # the file system, not the data
      return f"cannot read: {e.strerror}"
    return _describe_non_image(head) if "cannot identify" in str(e) else f"damaged header: {e}"
  except Image.DecompressionBombError:
    return f"too large (over {MAX_PIXELS} pixels)"
  except Exception as e:  # noqa: BLE001 (Pillow raises many kinds on damaged headers)
    return f"damaged header: {type(e).__name__}: {e}"
  if w * h > MAX_PIXELS:
    return f"too large ({w}x{h}, over {MAX_PIXELS} pixels)"
  return None


def _describe_non_image(head: bytes) -> str:
  if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
    return "HTML/XML text, not an image"
  if head[:4] in (b"II*\0", b"MM\0*"):
    return "TIFF data (JPEG/PNG/GIF/BMP/WebP only)"
  if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
    return "text, not an image"
  return "not a JPEG/PNG/GIF/BMP/WebP image"


def probe_files(files: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Splits ``files`` into (usable, [(skipped path, reason)]), order kept."""
  with ThreadPoolExecutor(16) as ex:  # threads hide file-system latency
    reasons = list(ex.map(probe_image, files, chunksize=64))
  good = [f for f, r in zip(files, reasons, strict=True) if r is None]
  bad = [(f, r) for f, r in zip(files, reasons, strict=True) if r is not None]
  return good, bad


def format_skipped(skipped: Sequence[tuple[str, str]], total: int) -> str:
  """One line: how many of ``total`` files were skipped, and the first few."""
  kinds: dict[str, int] = {}
  for _, r in skipped:
    kind = r.split(" (")[0].split(":")[0]
    kinds[kind] = kinds.get(kind, 0) + 1
  first = "; ".join(f"{f} ({r})" for f, r in skipped[:SKIPPED_NAMES_SHOWN])
  more = f"; and {len(skipped) - SKIPPED_NAMES_SHOWN} more" if (
      len(skipped) > SKIPPED_NAMES_SHOWN) else ""
  counts = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
  return f"skipped {len(skipped)} of {total} image files [{counts}]: {first}{more}"


def check_dataset(dataset: str) -> None:
  """Fails fast (before any compilation) when a folder dataset is unusable.

  Raises:
    DataError: naming the path and the expected layout, when a folder is
      missing, a plain file, or holds no image whose header reads.
  """
  if source(dataset) != "folder":
    return
  files = list_image_files(dataset)
  reasons = []
  for f in files:  # stops at the first readable image: usually one probe
    if (r := probe_image(f)) is None:
      return
    reasons.append((f, r))
  raise _no_readable_image(dataset, reasons, len(files))


def _no_readable_image(dataset: str, skipped, total: int) -> DataError:
  return DataError(
      f"no readable image below {dataset!r}: {format_skipped(skipped, total)}. "
      "Expected a folder of JPEG/PNG images at any depth, e.g. data/face/00001.jpg.")


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


DECODE_FAILED = "corrupt or truncated image data (the decoder failed)"


def load_images(files: Sequence[str], image_size: int,
                skipped: list | None = None) -> np.ndarray:
  """Decodes ``files`` into one (N, S, S, 3) uint8 array (parallel tf.data).

  Files whose data fails to decode are left out (N < len(files)) and, when
  ``skipped`` is given, appended to it as (path, reason).
  """
  tf = _tf()
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(files)), list(files)))
  ds = ds.map(lambda i, f: (i, _decode_and_crop(tf, tf.io.read_file(f), image_size)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # A failed decode drops its element; the surviving indices name the rest.
  ds = ds.ignore_errors(log_warning=False)
  out = np.empty((len(files), image_size, image_size, 3), np.uint8)
  ok = np.zeros(len(files), bool)
  i = 0
  for ids, chunk in ds.batch(256).as_numpy_iterator():
    out[i:i + len(chunk)] = chunk
    ok[ids] = True
    i += len(chunk)
  if skipped is not None:
    skipped.extend((files[j], DECODE_FAILED) for j in np.flatnonzero(~ok))
  return out[:i]


def _stream_batches(files: Sequence[str], image_size: int, batch: int,
                    seed: int, start_step: int,
                    skipped: list | None = None) -> Iterator[np.ndarray]:
  """The streaming path: tf.data decodes each batch from disk.

  A file that fails to decode is replaced by a repeat of a good image of
  its own batch (batch k stays a pure function of k) and recorded in
  ``skipped``; new failures are summarised in a warning once per epoch.
  """
  tf = _tf()
  paths = tf.constant(list(files))
  idx = tf.data.Dataset.from_generator(
      lambda: index_batches(len(files), batch, seed, start_step),
      output_signature=tf.TensorSpec((batch,), tf.int64))
  none_ok = tf.data.Dataset.from_tensors(
      (tf.zeros([0], tf.int64), tf.zeros([0, image_size, image_size, 3], tf.uint8)))

  def decode_batch(want):
    ok = tf.data.Dataset.from_tensor_slices(want).map(
        lambda i: (i, _decode_and_crop(tf, tf.io.read_file(paths[i]), image_size)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Exactly one element per batch: its decodable images (maybe none).
    ok = ok.ignore_errors(log_warning=False).batch(batch).concatenate(none_ok).take(1)
    return ok.map(lambda got, images: (want, got, images))

  # Each inner dataset yields one element, so a deterministic interleave
  # keeps batch order while decoding two batches at once.
  ds = idx.interleave(decode_batch, cycle_length=2, num_parallel_calls=2,
                      deterministic=True).prefetch(tf.data.AUTOTUNE)
  skipped = [] if skipped is None else skipped
  failed, new, last = {}, [], None
  steps_per_epoch = len(files) // batch
  for k, (want, got, decoded) in enumerate(ds.as_numpy_iterator(), start_step):
    images = decoded
    if len(got) < batch:
      for j in sorted(set(want.tolist()) - set(got.tolist())):
        if files[j] not in failed:
          failed[files[j]] = DECODE_FAILED
          new.append((files[j], DECODE_FAILED))
      if len(got):
        images = decoded[np.arange(batch) % len(got)]
      elif last is not None:  # nothing decoded: train on the last good batch
        images = last
      else:
        raise DataError(f"no image of batch {k} decodes and no earlier batch "
                         f"exists to stand in: {format_skipped(new, batch)}")
    last = images
    if new and (k + 1) % steps_per_epoch == 0:
      skipped.extend(new)
      logging.warning("Streaming input: %s (replaced by repeats of other images of "
                      "their batches).", format_skipped(new, len(files)))
      new = []
    yield to_float(images)


def _tfds_images(name: str, image_size: int, process_index: int = 0,
                 process_count: int = 1) -> np.ndarray:
  tf = _tf()
  import tensorflow_datasets as tfds  # noqa: PLC0415
  # drop_remainder: every host gets as many images, so all agree on the steps
  # per epoch (otherwise one waits forever at the end of an epoch).
  split = tfds.split_for_jax_process("train", process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  ds = tfds.load(name, split=split, shuffle_files=False)
  ds = ds.map(lambda ex: _resize_and_crop(tf, _rgb(tf, ex["image"]), image_size),
              num_parallel_calls=tf.data.AUTOTUNE)
  return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def _rgb(tf, img):
  """uint8 RGB from a TFDS image of 1, 3 or 4 channels."""
  img = tf.image.convert_image_dtype(img, tf.uint8)
  # Branching on the channel count in the graph would trace grayscale_to_rgb
  # on 3-channel images, which fails; TFDS images have a static one.
  c = img.shape[-1]
  if c is None:
    return tf.cond(tf.equal(tf.shape(img)[-1], 1), lambda: tf.tile(img, [1, 1, 3]),
                   lambda: img[..., :3])
  return tf.image.grayscale_to_rgb(img) if c == 1 else img[..., :3]


def create_input(config, *, start_step: int = 0, process_index: int | None = None,
                 process_count: int | None = None) -> Input:
  """This host's training input of ``config`` (dataset, image_size, batch_size, seed, cache).

  Args:
    config: the run's config.
    start_step: the first batch to yield (resume).
    process_index: this host (default ``jax.process_index()``).
    process_count: hosts (default ``jax.process_count()``).
  """
  import jax  # noqa: PLC0415

  from dcgan_jax import parallel  # noqa: PLC0415
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  batch = parallel.split_batch(config.batch_size, process_count)[0]
  kind, size = source(config.dataset), config.image_size
  if kind == "folder":
    return _folder_input(config, batch, start_step, process_index, process_count)
  if kind == "synthetic":
    from dcgan_jax.data import synthetic  # noqa: PLC0415
    total = config.synthetic_size
    # Every host keeps as many images, so all take as many steps per epoch.
    images = synthetic.make_faces(total, size, seed=SYNTHETIC_SEED)
    images = images[process_index::process_count][: total // process_count]
    desc = f"{total} synthetic faces"
  else:
    images = _tfds_images(config.dataset[5:], size, process_index, process_count)
    total = len(images) * process_count  # equal shares (drop_remainder)
    desc = f"TFDS {config.dataset[5:]!r}"
  _check_steps(len(images) // batch, total, config.batch_size, desc)
  return Input(array_batches(images, batch, config.seed, start_step), total,
               len(images) // batch, desc + " (in memory)", images=images)


def reference_subset(num: int, total: int) -> np.ndarray:
  """The indices of a fixed subset of ``num`` of ``total`` images (-1 or more: all)."""
  if num < 0 or num >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(0).permutation(total)[:num])


def reference_identity(config, num: int) -> tuple[str, int, int] | None:
  """(dataset identity, images in it, images in the reference subset), decoding nothing.

  None for TFDS, whose size is known once loaded.
  """
  kind = source(config.dataset)
  if kind == "tfds":
    return None
  if kind == "synthetic":
    total, name = config.synthetic_size, f"synthetic:{config.synthetic_size}"
  else:
    total, name = len(list_image_files(config.dataset)), fs.absolute(config.dataset)
  return name, total, len(reference_subset(num, total))


def reference_images(config, num: int) -> tuple[np.ndarray, str, int]:
  """A fixed subset of ``num`` of every host's images, as the model sees them.

  Returns:
    (uint8 (n, S, S, 3) images, the dataset's identity, images in the dataset).
  """
  kind, size = source(config.dataset), config.image_size
  if kind == "synthetic":
    from dcgan_jax.data import synthetic  # noqa: PLC0415
    total = config.synthetic_size
    images = synthetic.make_faces(total, size, seed=SYNTHETIC_SEED)
    return images[reference_subset(num, total)], f"synthetic:{total}", total
  if kind == "tfds":
    images = _tfds_images(config.dataset[5:], size)
    return images[reference_subset(num, len(images))], config.dataset, len(images)
  files = list_image_files(config.dataset)
  chosen = [files[i] for i in reference_subset(num, len(files))]
  return load_images(chosen, size), fs.absolute(config.dataset), len(files)


def _folder_input(config, batch: int, start_step: int, process_index: int,
                  process_count: int) -> Input:
  """A folder of images (host batches of ``batch``): probed, bad files skipped,
  cached or streamed."""
  dataset, size, seed = config.dataset, config.image_size, config.seed
  files = list_image_files(dataset)
  total = len(files)
  # Every host keeps the same number of images, so all take the same number
  # of steps per epoch (with several hosts, skipped files are made up for by
  # repeating good ones of the same host).
  per_host = total // process_count
  files = files[process_index::process_count][:per_host]
  files, skipped = probe_files(files)
  if not files:
    raise _no_readable_image(dataset, skipped, per_host)
  if config.cache:
    images = load_images(files, size, skipped)
    if not len(images):
      raise DataError(f"no image below {dataset!r} decodes: "
                       f"{format_skipped(skipped, per_host)}.")
    if process_count > 1:
      images = images[np.arange(per_host) % len(images)]
  elif process_count > 1:
    files = [files[i % len(files)] for i in range(per_host)]
  if skipped:
    logging.warning("Dataset %r: %s.", dataset, format_skipped(skipped, per_host))
  num = len(images) if config.cache else len(files)
  desc = f"{num * process_count} images in {dataset!r}"
  if skipped:
    desc += f" ({len(skipped)} bad files skipped)"
  _check_steps(num // batch, num * process_count, config.batch_size, desc)
  if config.cache:
    return Input(array_batches(images, batch, seed, start_step), num * process_count,
                 num // batch, desc + " (in memory)", skipped, per_host, images)
  return Input(_stream_batches(files, size, batch, seed, start_step, skipped),
               num * process_count, num // batch, desc + " (streamed)", skipped, per_host)


def _check_steps(steps: int, total: int, batch_size: int, desc: str):
  if steps < 1:
    raise DataError(f"{desc}: fewer images ({total}) than config.batch_size="
                     f"{batch_size}; lower the batch size or add images.")
