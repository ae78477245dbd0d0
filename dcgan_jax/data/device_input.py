"""Feeding the compiled step, and the input path with the images on the devices.

``feed`` gives each call of ``train.Step`` its batch: ``steps_per_call`` host
batches stacked, placed by the runner in a background thread ahead of the
step; or, with ``input_on_device``, rows of image indices.

``config.input_on_device = True``: this host's uint8 images are copied once to
each of its local devices (``Runner.put_copies``). A batch is then only its
rows of image indices, (K, host_batch) int32 per call of the step; the step
gathers, converts and normalises the images itself (``gather``), so no image
crosses from the host per step and no computation runs besides the step.

Batch k is the in-memory path's batch k, image for image and device for
device: the rows are ``input_pipeline.index_batches`` sorted as
``input_pipeline.array_batches`` sorts them, and ``Runner.put_batch`` splits
rows over the devices as it splits host images. So a run gives the same
batches with either path and resumes exactly with both.

Memory: the images stay uint8 (96x96 faces: 27 KiB each, 50k = 1.4 GB) on
every local device. On a CPU the "devices" share the host's memory, so this
path mainly saves the host-side float conversion; it is meant for GPUs/TPUs.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from dcgan_jax import parallel

from dcgan_jax.data import input_pipeline


def gather(images, rows):
  """The images of ``rows`` (indices into uint8 ``images``) as float32 in [-1, 1]."""
  return images[rows].astype(jnp.float32) * np.float32(1 / 127.5) - np.float32(1)


def index_rows(num_images: int, batch: int, seed: int,
               start_step: int = 0) -> Iterator[np.ndarray]:
  """Endless sorted int32 index rows: row k holds the images of batch k."""
  for idx in input_pipeline.index_batches(num_images, batch, seed, start_step):
    yield np.sort(idx).astype(np.int32)


def host_images(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """What ``gather`` makes of ``rows``, on the host (the real-image grids)."""
  return input_pipeline.to_float(images[rows])


class Prefetch:
  """Runs an iterator in a background thread, ``size`` items ahead.

  ``close`` stops the thread and drops what it holds (the run's ExitStack
  calls it, however the loop ends).
  """

  def __init__(self, it: Iterator, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = object()
    self._thread = threading.Thread(target=self._work, args=(it,), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, it: Iterator) -> None:
    try:
      for item in it:
        if not self._put(item):
          return
    except BaseException as e:  # noqa: BLE001 (re-raised in the consumer)
      self._put(e)
    self._put(self._done)

  def __iter__(self) -> Iterator:
    while (item := self._queue.get()) is not self._done:
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self) -> None:
    self._stop.set()
    while not self._queue.empty():
      self._queue.get_nowait()
    self._thread.join(timeout=10)


@dataclasses.dataclass
class Feed:
  """The calls' inputs.

  Attributes:
    calls: (steps done after the call, host batch, device batch) per call.
      The host batch is (K, host_batch, S, S, 3) images, or (K, host_batch)
      rows of indices into ``images``.
    images: None, or this host's images on its devices (``input_on_device``).
    real_images: host batch -> the first ``num_plot`` images of its last row
      (the real-image grid).
  """

  calls: Prefetch
  images: Any
  real_images: Callable[[np.ndarray], np.ndarray]

  def close(self) -> None:
    """Stops the background placement (what it holds is dropped)."""
    self.calls.close()


def feed(config, inp: input_pipeline.Input, runner: parallel.Runner, start: int,
         total: int) -> Feed:
  """The inputs of the calls from step ``start`` to ``total``.

  ``steps_per_call`` host batches are stacked per call; a run resumed at a
  step that is not a multiple of it first takes a shorter call.

  Args:
    config: steps_per_call, input_on_device, batch_size, seed, num_plot.
    inp: the run's input (its images, for ``input_on_device``).
    runner: places the batches (in the prefetch thread) and the images.
    start: the first step; total: the run's length.
  """
  k = config.steps_per_call
  if config.input_on_device:  # config_lib.validate refuses it for streamed folders
    host_batch = parallel.split_batch(config.batch_size)[0]
    source = index_rows(len(inp.images), host_batch, config.seed, start)
    images = runner.put_copies(inp.images)
    real = functools.partial(host_images, inp.images)
  else:
    source, images, real = inp.batches, None, lambda rows: rows

  def calls():
    done = start
    while done < total:
      n = min(k - done % k, total - done)
      host = np.stack([next(source) for _ in range(n)]) if n > 1 else next(source)[None]
      done += n
      yield done, host, runner.put_batch(host)
  return Feed(Prefetch(calls()), images, lambda host: real(host[-1][: config.num_plot]))
