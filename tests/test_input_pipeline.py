import os

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from dcgan_jax import errors
from dcgan_jax.data import input_pipeline


def _write_odd_images(folder):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (120, 100, 3), np.uint8)
  os.makedirs(folder / "a" / "b")
  Image.fromarray(rgb).save(folder / "rgb.jpg")
  Image.fromarray(rgb[..., 0]).save(folder / "a" / "gray.png")                  # L
  Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "a" / "rgba.png")
  Image.fromarray(rgb).convert("P").save(folder / "a" / "b" / "palette.png")
  Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "a" / "b" / "g16.png")
  Image.fromarray(rgb[:50, :]).save(folder / "small.JPEG")                       # upscaled
  Image.fromarray(rng.integers(0, 256, (96, 300, 3), np.uint8)).save(folder / "wide.png")
  (folder / "notes.txt").write_text("not an image")


def test_folder_any_depth_and_odd_modes(tmp_path):
  _write_odd_images(tmp_path)
  files = input_pipeline.list_image_files(str(tmp_path))
  assert [os.path.relpath(f, tmp_path) for f in files] == [
      "a/b/g16.png", "a/b/palette.png", "a/gray.png", "a/rgba.png",
      "rgb.jpg", "small.JPEG", "wide.png"]
  images = input_pipeline.load_images(files, 96)
  assert images.shape == (7, 96, 96, 3) and images.dtype == np.uint8
  gray = images[2]
  assert np.array_equal(gray[..., 0], gray[..., 1])  # grayscale -> equal channels
  # 16-bit PNG scaled to 8 bits (x*257 -> x), not clipped to white.
  assert 60 < images[0].mean() < 200


def test_center_crop_keeps_the_middle(tmp_path):
  img = np.zeros((96, 288, 3), np.uint8)
  img[:, 96:192] = 255                          # white middle third
  Image.fromarray(img).save(tmp_path / "wide.png")
  out = input_pipeline.load_images([str(tmp_path / "wide.png")], 96)[0]
  assert out.min() == 255


def test_batches_range_shape_dtype(tmp_path):
  _write_odd_images(tmp_path)
  for cache in (True, False):
    inp = input_pipeline.create_input(
        tiny_config(dataset=str(tmp_path), batch_size=3, cache=cache))
    assert inp.num_examples == 7 and inp.steps_per_epoch == 2
    b = next(inp.batches)
    assert b.shape == (3, 96, 96, 3) and b.dtype == np.float32
    assert -1.0 <= b.min() < -0.9 and 0.9 < b.max() <= 1.0


def test_cached_and_streamed_paths_agree_and_resume_exactly(tmp_path):
  _write_odd_images(tmp_path)
  config = tiny_config(dataset=str(tmp_path), batch_size=2)
  cached = input_pipeline.create_input(config).batches
  seq = [next(cached) for _ in range(7)]          # > 2 epochs of 3 steps
  config.cache = False
  streamed = input_pipeline.create_input(config, start_step=4).batches
  for want in seq[4:]:
    np.testing.assert_allclose(np.sort(next(streamed), axis=0), np.sort(want, axis=0),
                               atol=1e-6)


def test_epochs_are_permutations():
  seen = np.concatenate([next(b) for b in [input_pipeline.index_batches(10, 3, 0)]
                         for _ in range(3)])
  assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # no repeats in an epoch
  assert len(seen) == 9


def test_hosts_read_disjoint_shards():
  config = tiny_config(synthetic_size=32, batch_size=8)
  a = next(input_pipeline.create_input(config, process_index=0, process_count=2).batches)
  b = next(input_pipeline.create_input(config, process_index=1, process_count=2).batches)
  assert a.shape == b.shape == (4, 96, 96, 3)
  assert not any(np.array_equal(x, y) for x in a for y in b)


def test_clear_errors(tmp_path):
  with pytest.raises(errors.DataError, match="nope.*does not exist"):
    input_pipeline.list_image_files(str(tmp_path / "nope"))
  (tmp_path / "f.jpg").write_bytes(b"x")
  with pytest.raises(errors.DataError, match="f.jpg.*not a folder"):
    input_pipeline.list_image_files(str(tmp_path / "f.jpg"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    input_pipeline.list_image_files(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="fewer images"):
    input_pipeline.create_input(tiny_config(synthetic_size=4, batch_size=8))


def test_synthetic_faces_are_deterministic_and_varied():
  from dcgan_jax.data import synthetic
  a, b = synthetic.make_faces(8, seed=3), synthetic.make_faces(12, seed=3)
  assert a.shape == (8, 96, 96, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b[:8])
  assert not np.array_equal(a[0], a[1])
  assert not np.array_equal(a, synthetic.make_faces(8, seed=4))


def test_real_faces(shared_faces):
  files = input_pipeline.list_image_files(shared_faces)
  assert len(files) == 6000
  images = input_pipeline.load_images(files[:16], 96)
  assert images.shape == (16, 96, 96, 3) and 20 < images.mean() < 235


def test_tfds_dataset_by_name():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):  # no download: random examples
    inp = input_pipeline.create_input(tiny_config(dataset="tfds:mnist", batch_size=4))
    b = next(inp.batches)
  assert inp.num_examples == 20 and inp.steps_per_epoch == 5
  assert b.shape == (4, 96, 96, 3) and b.dtype == np.float32   # 28x28x1 -> 96x96 RGB
  assert -1.0 <= b.min() and b.max() <= 1.0
  np.testing.assert_array_equal(b[..., 0], b[..., 2])


def test_tfds_hosts_get_equal_shares_and_the_same_steps_per_epoch(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class OddSizedFaces(tfds.core.GeneratorBasedBuilder):
    """23 tiny images: 2 hosts cannot split them evenly."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"image": tfds.features.Image(shape=(8, 8, 3))}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(23):
        yield i, {"image": np.full((8, 8, 3), i, np.uint8)}

  OddSizedFaces(data_dir=str(tmp_path)).download_and_prepare()
  tfds.core.add_data_dir(str(tmp_path))
  config = tiny_config(dataset="tfds:odd_sized_faces", batch_size=4)
  hosts = [input_pipeline.create_input(config, process_index=i, process_count=2)
           for i in range(2)]
  # 11 images each (not 12 and 11): 5 steps of 2 images per host on both.
  assert [len(h.images) for h in hosts] == [11, 11]
  assert [h.steps_per_epoch for h in hosts] == [5, 5]
  assert hosts[0].num_examples == hosts[1].num_examples == 22
  firsts = {int(h.images[i, 0, 0, 0]) for h in hosts for i in range(11)}
  assert len(firsts) == 22  # the two shares do not overlap
