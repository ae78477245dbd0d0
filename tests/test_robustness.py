"""Bad input never crashes training: odd and broken image folders, NaN, workdirs."""

import faulthandler
import io
import logging
import os
import struct
import zlib

import jax
import numpy as np
import pytest
from conftest import tiny_config
from etils import epath
from PIL import Image

from dcgan_jax import errors, guards, train, workdir
from dcgan_jax.data import input_pipeline, synthetic
from dcgan_jax.state import create_train_state

# Bad kinds: file name -> what its skip reason must say.
BAD_REASONS = {
    "zero.jpg": "empty file",
    "html.jpg": "HTML",
    "notes.png": "text, not an image",
    "trunc_header.jpg": "damaged header",
    "trunc_data.jpg": "corrupt or truncated",
    "tiff_as.jpg": "TIFF",
    "huge_header.png": "too large",
    "dangling.jpg": "dangling symlink",
    "fifo.jpg": "not a regular file",
}
ODD_KINDS = ("cmyk.jpg", "gray.jpg", "la.png", "rgba.png", "palette.png", "g16.png",
             "rgb16.png", "one.png", "one.jpg", "wide.jpg", "tall.png", "png_as.jpg",
             "gif_as.jpg", "progressive.jpg")


def _chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack(">I", len(data)) + kind + data
          + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(w: int, h: int, depth: int, color: int, rows: bytes) -> bytes:
  ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
          + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _jpeg_bytes(img: np.ndarray, **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", **kw)
  return buf.getvalue()


def write_bad_and_odd(folder, seed: int = 0) -> dict[str, str]:
  """Writes every bad and every odd-but-valid kind into ``folder``.

  Returns:
    {name: expected reason fragment} of the bad files.
  """
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  face = synthetic.make_faces(1, seed=seed)[0]
  rgb = rng.integers(0, 256, (120, 100, 3), np.uint8)
  good = _jpeg_bytes(face, quality=90)

  def put(name, data):
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)

  put("zero.jpg", b"")
  put("html.jpg", b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
  put("notes.png", b"just some notes, saved with the wrong name\n")
  put("trunc_header.jpg", good[:100])
  put("trunc_data.jpg", good[: len(good) // 2])
  Image.fromarray(rgb).save(os.path.join(folder, "tiff_as.jpg"), format="TIFF")
  put("huge_header.png", _png(60000, 60000, 8, 2, b"\0" * 100))
  os.symlink(os.path.join(folder, "missing-target.jpg"), os.path.join(folder, "dangling.jpg"))
  os.mkfifo(os.path.join(folder, "fifo.jpg"))  # opening it would block forever
  os.mkdir(os.path.join(folder, "dir.jpg"))    # a folder is not a file: not even listed

  Image.fromarray(rgb).convert("CMYK").save(os.path.join(folder, "cmyk.jpg"))
  Image.fromarray(rgb[..., 0]).save(os.path.join(folder, "gray.jpg"))
  Image.fromarray(rgb[..., 0]).convert("LA").save(os.path.join(folder, "la.png"))
  Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(os.path.join(folder, "rgba.png"))
  Image.fromarray(rgb).convert("P").save(os.path.join(folder, "palette.png"))
  Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(os.path.join(folder, "g16.png"))
  rgb16 = rgb.astype(">u2") * 257
  put("rgb16.png", _png(100, 120, 16, 2, b"".join(b"\0" + r.tobytes() for r in rgb16)))
  Image.fromarray(rgb[:1, :1]).save(os.path.join(folder, "one.png"))
  Image.fromarray(rgb[:1, :1]).save(os.path.join(folder, "one.jpg"))
  Image.fromarray(rng.integers(0, 256, (20, 4000, 3), np.uint8)).save(
      os.path.join(folder, "wide.jpg"))
  Image.fromarray(rng.integers(0, 256, (4000, 20, 3), np.uint8)).save(
      os.path.join(folder, "tall.png"))
  Image.fromarray(rgb).save(os.path.join(folder, "png_as.jpg"), format="PNG")
  Image.fromarray(rgb).save(os.path.join(folder, "gif_as.jpg"), format="GIF")
  Image.fromarray(rgb).save(os.path.join(folder, "progressive.jpg"), progressive=True)
  return dict(BAD_REASONS)


def write_good_faces(folder, num: int, seed: int = 0):
  os.makedirs(folder, exist_ok=True)
  for i, face in enumerate(synthetic.make_faces(num, seed=seed)):
    Image.fromarray(face).save(os.path.join(folder, f"face{i:03d}.png"))


def _names(skipped):
  return {os.path.basename(f): r for f, r in skipped}


@pytest.fixture
def mixed_folder(tmp_path):
  folder = tmp_path / "data"
  bad = write_bad_and_odd(folder)
  write_good_faces(folder, 13)  # 27 good (+1 streamed): whole batches of 4
  return folder, bad


@pytest.mark.parametrize("cache", [True, False])
def test_every_bad_kind_is_skipped_named_once_and_odd_ones_converted(
    mixed_folder, cache, caplog):
  folder, bad = mixed_folder
  with caplog.at_level(logging.WARNING):
    inp = input_pipeline.create_input(
        tiny_config(dataset=str(folder), batch_size=4, cache=cache), process_count=1,
        process_index=0)
    batches = [next(inp.batches) for _ in range(2 * inp.steps_per_epoch)]  # 2 epochs
  good = 13 + len(ODD_KINDS)
  assert inp.num_files == good + len(bad)
  skipped = _names(inp.skipped)
  assert set(skipped) == set(bad)
  for name, why in bad.items():
    assert why in skipped[name], (name, skipped[name])
  if cache:  # every file decoded up front: the data simply leaves the set
    assert inp.num_examples == good and inp.steps_per_epoch == good // 4
  else:      # decode failures are met (and replaced in their batch) on the way
    assert inp.num_examples == good + 1 and inp.steps_per_epoch == (good + 1) // 4
  for b in batches:
    assert b.shape == (4, 96, 96, 3) and np.isfinite(b).all()
    assert -1 <= b.min() and b.max() <= 1
  summaries = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  first = summaries[0]
  assert f"skipped {len(bad) - (0 if cache else 1)} of {good + len(bad)} image files [" in first
  assert first.count(".jpg (") + first.count(".png (") == input_pipeline.SKIPPED_NAMES_SHOWN
  # One summary up front; streamed, one more for what failed to decode in epoch 1.
  assert len(summaries) == (1 if cache else 2), summaries
  if not cache:
    assert "trunc_data.jpg" in summaries[1] and "skipped 1 of" in summaries[1]


def test_odd_but_valid_images_are_converted_faithfully(tmp_path):
  write_bad_and_odd(tmp_path)
  files = [str(tmp_path / n) for n in ODD_KINDS]
  skipped = []
  images = input_pipeline.load_images(files, 96, skipped)
  assert skipped == [] and images.shape == (len(ODD_KINDS), 96, 96, 3)
  by_name = dict(zip(ODD_KINDS, images, strict=True))
  rgb = np.asarray(Image.open(tmp_path / "png_as.jpg").convert("RGB"), np.float32)
  ref = input_pipeline.load_images([str(tmp_path / "png_as.jpg")], 96)[0].astype(np.float32)
  # CMYK comes back in the right colours (JPEG loss aside), not inverted.
  assert np.abs(by_name["cmyk.jpg"].astype(np.float32) - ref).mean() < 12
  # 16-bit data is scaled to 8 bits, not clipped: the same picture as 8-bit.
  assert np.abs(by_name["rgb16.png"].astype(np.float32) - ref).max() <= 1
  gray = by_name["g16.png"]
  assert np.array_equal(gray[..., 0], gray[..., 2]) and 60 < gray.mean() < 200
  # A 1x1 image becomes a flat 96x96 one of its colour.
  assert np.all(by_name["one.png"] == rgb[0, 0].astype(np.uint8))


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
  write_good_faces(tmp_path, 2)
  locked = str(tmp_path / "face001.png")
  real_open = open

  def deny(path, *args, **kw):  # root reads mode-000 files, so deny it here
    if os.fspath(path) == locked:
      raise PermissionError(13, "Permission denied", locked)
    return real_open(path, *args, **kw)

  monkeypatch.setattr(input_pipeline, "open", deny, raising=False)
  good, skipped = input_pipeline.probe_files(input_pipeline.list_image_files(str(tmp_path)))
  assert [os.path.basename(f) for f in good] == ["face000.png"]
  assert skipped == [(locked, "cannot read: Permission denied")]


def test_summary_names_count_and_first_few():
  skipped = [(f"/d/{i}.jpg", "empty file (0 bytes)") for i in range(12)]
  line = input_pipeline.format_skipped(skipped, 100)
  assert line.startswith("skipped 12 of 100 image files [empty file: 12]: "
                         "/d/0.jpg (empty file (0 bytes))")
  assert "/d/4.jpg" in line and "/d/5.jpg" not in line and line.endswith("and 7 more")


def test_streamed_batches_resume_exactly_over_decode_failures(tmp_path):
  write_good_faces(tmp_path, 9)
  good = _jpeg_bytes(synthetic.make_faces(1, seed=5)[0])
  for i in range(3):  # pass the probe, fail the decoder
    (tmp_path / f"cut{i}.jpg").write_bytes(good[: len(good) // 2])
  config = tiny_config(dataset=str(tmp_path), batch_size=3, cache=False)
  run = input_pipeline.create_input(config, process_count=1, process_index=0)
  seq = [next(run.batches) for _ in range(9)]        # 2.25 epochs of 4 steps
  resumed = input_pipeline.create_input(config, start_step=5, process_count=1,
                                        process_index=0)
  for want in seq[5:]:
    np.testing.assert_array_equal(next(resumed.batches), want)
  assert {os.path.basename(f) for f, _ in run.skipped} == {"cut0.jpg", "cut1.jpg", "cut2.jpg"}
  # A replaced image is a repeat of another image of its own batch.
  for b in seq:
    assert len({x.tobytes() for x in b}) <= 3


def test_hosts_keep_equal_steps_when_bad_files_differ(tmp_path):
  write_good_faces(tmp_path, 12)
  for i in (0, 2, 4):  # all on host 0 (every other file, sorted)
    (tmp_path / f"face{i:03d}.png").write_bytes(b"")
  for cache in (True, False):
    config = tiny_config(dataset=str(tmp_path), batch_size=4, cache=cache)
    inputs = [input_pipeline.create_input(config, process_index=i, process_count=2)
              for i in range(2)]
    assert [i.steps_per_epoch for i in inputs] == [3, 3]
    assert [len(i.skipped) for i in inputs] == [3, 0]
    assert next(inputs[0].batches).shape == (2, 96, 96, 3)


def test_folder_without_a_readable_image_fails_before_compiling(tmp_path, monkeypatch):
  write_bad_and_odd(tmp_path / "bad")
  for n in ODD_KINDS:
    os.remove(tmp_path / "bad" / n)
  os.remove(tmp_path / "bad" / "trunc_data.jpg")  # header reads: it would count
  monkeypatch.setattr(train, "create_train_state", lambda *a: pytest.fail("compiled"))
  with pytest.raises(ValueError, match=r"no readable image below .*bad.*skipped 8 of 8.*"
                     r"Expected a folder of JPEG/PNG images"):
    train.train_and_evaluate(tiny_config(dataset=str(tmp_path / "bad")), str(tmp_path / "w"))
  with pytest.raises(errors.DataError, match="nope.*does not exist.*data/README"):
    train.train_and_evaluate(tiny_config(dataset=str(tmp_path / "nope")), str(tmp_path / "w"))
  with pytest.raises(errors.DataError, match="zero.jpg.*is a file.*folder"):
    train.train_and_evaluate(tiny_config(dataset=str(tmp_path / "bad" / "zero.jpg")),
                             str(tmp_path / "w"))


def _mutants(rng, seeds: int) -> list[bytes]:
  """Damaged JPEG/PNG byte strings: truncations, bit flips, header damage."""
  out = []
  for i in range(seeds):
    face = synthetic.make_faces(1, seed=100 + i)[0]
    enc = io.BytesIO()
    Image.fromarray(face).save(enc, format="PNG")
    for data in (_jpeg_bytes(face, quality=int(rng.integers(40, 95)),
                             progressive=bool(i % 2)), enc.getvalue()):
      n = len(data)
      out.append(data[: int(rng.integers(1, n))])                      # truncation
      for flips in (1, 8, 64):                                         # bit flips
        b = bytearray(data)
        for p in rng.integers(0, n, flips):
          b[p] ^= 1 << int(rng.integers(8))
        out.append(bytes(b))
      b = bytearray(data)                                              # header damage
      p = int(rng.integers(2, min(n, 200)))
      b[p:p + 4] = rng.integers(0, 256, 4, np.uint8).tobytes()
      out.append(bytes(b))
      b = bytearray(data)                                              # dims -> 0xFFFF
      sof = max(b.find(b"\xff\xc0"), b.find(b"\xff\xc2")) if data[:2] == b"\xff\xd8" else 12
      b[sof + 5: sof + 9] = b"\xff\xff\xff\xff"
      out.append(bytes(b))
      out.append(data[:p] + data[p + int(rng.integers(1, 50)):])      # bytes deleted
  return out


def test_fuzzed_jpeg_and_png_bytes_decode_or_are_skipped(tmp_path):
  rng = np.random.default_rng(0)
  mutants = _mutants(rng, 24)
  assert len(mutants) >= 300
  files = []
  for i, data in enumerate(mutants):
    files.append(str(tmp_path / f"m{i:04d}.{'png' if data[1:4] == b'PNG' else 'jpg'}"))
    with open(files[-1], "wb") as f:
      f.write(data)
  faulthandler.dump_traceback_later(300, exit=True)  # a hang fails, loudly
  try:
    good, skipped = input_pipeline.probe_files(files)
    images = input_pipeline.load_images(good, 96, skipped)
    inp = input_pipeline.create_input(
        tiny_config(dataset=str(tmp_path), batch_size=16, cache=False), process_count=1,
        process_index=0)
    streamed = [next(inp.batches) for _ in range(inp.steps_per_epoch)]
  finally:
    faulthandler.cancel_dump_traceback_later()
  # Each mutant decoded or was skipped with a reason; both outcomes occur.
  assert len(images) + len(skipped) == len(files)
  assert 0.1 * len(files) < len(skipped) < 0.9 * len(files), len(skipped)
  assert all(r for _, r in skipped)
  assert images.shape[1:] == (96, 96, 3) and images.dtype == np.uint8
  assert all(b.shape == (16, 96, 96, 3) and np.isfinite(b).all() for b in streamed)
  # Dimensions claiming 65535x65535 never reach the decoder.
  assert sum("too large" in r for _, r in skipped) >= 24


def _nan_input(monkeypatch, bad_step: int):
  """Makes batch ``bad_step`` (0-based) of every input NaN."""
  real = input_pipeline.create_input

  def create(config, **kw):
    inp = real(config, **kw)
    src = inp.batches

    def batches():
      for k, b in enumerate(src, kw.get("start_step", 0)):
        yield np.full_like(b, np.nan) if k == bad_step else b
    inp.batches = batches()
    return inp
  monkeypatch.setattr(input_pipeline, "create_input", create)


@pytest.mark.slow
def test_nan_stops_training_naming_the_step_and_is_never_checkpointed(tmp_path, monkeypatch):
  from dcgan_jax import checkpoints
  _nan_input(monkeypatch, bad_step=4)  # the 5th iteration sees a NaN batch
  # No log before the end: the check before the save of step 6 must catch it.
  config = tiny_config(num_train_steps=8, log_every=100, plot_every=100,
                       save_every_steps=2)
  with pytest.raises(guards.NonFiniteError, match=r"training step 5 \(.*loss_d=nan"):
    train.train_and_evaluate(config, str(tmp_path))
  ckpts = checkpoints.Checkpoints(str(tmp_path / checkpoints.CHECKPOINT_DIR), read_only=True)
  assert ckpts.all_steps() == [2, 4]
  template = create_train_state(config, jax.random.PRNGKey(0))
  last = ckpts.restore(template, 4)
  assert int(last.step) == 4 and guards.tree_is_finite(last)
  assert not os.path.exists(tmp_path / "samples")  # no grid drawn from NaN


def _mount_tmpfs(path, size: str):
  import subprocess
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root")
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                     capture_output=True, text=True, check=False)
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
  return lambda: subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow  # a second full (tiny) training run: ~1 CPU minute
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's
def test_disk_full_during_a_checkpoint_save_keeps_the_last_one(tmp_path, monkeypatch):
  """The checkpoints folder is a real 16 MB tmpfs that fills up after step 4."""
  from dcgan_jax import checkpoints
  ckpt_dir = tmp_path / "w" / checkpoints.CHECKPOINT_DIR
  umount = _mount_tmpfs(ckpt_dir, "16m")
  real_save = checkpoints.Checkpoints.save

  def save_then_fill(self, state, config, *args):
    path = real_save(self, state, config, *args)
    if int(state.step) == 4:  # the disk fills up once step 4 is on it
      self.wait()
      with open(ckpt_dir / "filler", "wb") as f:
        with pytest.raises(OSError, match="No space left"):
          while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    return path

  monkeypatch.setattr(checkpoints.Checkpoints, "save", save_then_fill)
  try:
    config = tiny_config(num_train_steps=10, log_every=100, plot_every=100,
                         save_every_steps=2, max_to_keep=5)
    with pytest.raises(guards.CheckpointWriteError,
                       match=r"(?s)checkpoints failed \(disk full\).*No space left.*steps "
                             r"\[2, 4\]\) are intact: a rerun with the same workdir resumes "
                             r"from step 4.*Free disk space"):
      train.train_and_evaluate(config, str(tmp_path / "w"))
    os.remove(ckpt_dir / "filler")
    ckpts = checkpoints.Checkpoints(str(ckpt_dir))  # also clears the failed tmp folder
    assert ckpts.all_steps() == [2, 4]
    template = create_train_state(config, jax.random.PRNGKey(0))
    last = ckpts.restore(template, 4)
    assert int(last.step) == 4 and guards.tree_is_finite(last)
    ckpts.close()
  finally:
    umount()


def test_the_first_non_finite_step_is_kept_with_its_losses():
  import jax
  import jax.numpy as jnp

  names = ("loss_d", "loss_g")
  update = jax.jit(lambda f, step, d, g, ran_g: f.update(
      step, {"loss_d": d, "loss_g": g}, {"loss_d": True, "loss_g": ran_g}))
  first = guards.FirstNonFinite.empty(names)
  for step, d, g, ran_g in [(1, 1.0, 2.0, True), (2, 0.5, np.nan, False),  # G skipped
                            (3, np.inf, 3.0, True), (4, np.nan, np.nan, True)]:
    first = update(first, jnp.int32(step), jnp.float32(d), jnp.float32(g), ran_g)
    if step == 2:  # the NaN of a net that did not run is not a NaN of the run
      guards.check_finite(jax.device_get(first))
  host = jax.device_get(first)
  assert int(host.step) == 3 and float(host.values["loss_g"]) == 3.0
  with pytest.raises(guards.NonFiniteError, match=r"step 3 \(loss_d=inf\)"):
    guards.check_finite(host, " Lower the learning rates.")
  assert guards.tree_is_finite({"a": jnp.ones(3), "n": jnp.int32(1), "h": np.zeros(2)})
  assert not guards.tree_is_finite({"a": jnp.array([1.0, np.nan])})
  assert not guards.tree_is_finite({"a": np.array([np.inf], np.float32)})


def test_unwritable_workdir_fails_at_start_naming_it(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  with pytest.raises(errors.WorkdirError, match=r"workdir .*file/run.* not a writable folder"):
    workdir.check(str(tmp_path / "file" / "run"))
  monkeypatch.setattr(train, "create_train_state", lambda *a: pytest.fail("compiled"))
  ro = tmp_path / "ro"
  ro.mkdir()
  local = type(epath.Path(str(ro)))
  real = local.write_bytes

  def read_only(self, data):
    if str(self.parent) == str(ro):
      raise PermissionError(13, "Permission denied", str(self))
    return real(self, data)

  monkeypatch.setattr(local, "write_bytes", read_only)
  with pytest.raises(errors.WorkdirError, match=r"workdir .*ro' is not a writable folder "
                                                r"\(Permission denied; .*--workdir"):
    train.train_and_evaluate(tiny_config(), str(ro))


def test_a_nan_stop_still_releases_the_handler_the_checkpoints_and_the_writer(
    tmp_path, monkeypatch):
  import signal

  from clu import metric_writers

  from dcgan_jax import checkpoints
  closed, create = [], metric_writers.create_default_writer

  def recording_writer(*args, **kwargs):
    writer = create(*args, **kwargs)
    close = writer.close
    writer.close = lambda: (closed.append("writer"), close())[1]
    return writer

  real_close = checkpoints.Checkpoints.close

  def recording_close(self):
    closed.append(os.path.basename(self.directory))
    real_close(self)

  monkeypatch.setattr(metric_writers, "create_default_writer", recording_writer)
  monkeypatch.setattr(checkpoints.Checkpoints, "close", recording_close)
  _nan_input(monkeypatch, bad_step=3)
  handler = signal.getsignal(signal.SIGTERM)
  config = tiny_config(num_train_steps=6, log_every=2, plot_every=100, save_every_steps=2)
  with pytest.raises(guards.NonFiniteError, match=r"training step 4 \("):
    train.train_and_evaluate(config, str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is handler
  assert sorted(closed) == ["checkpoints", "writer"]
  from test_main import _scalar_tags
  assert _scalar_tags(tmp_path)["loss_d"] == [2]  # flushed before the stop
  assert checkpoints.Checkpoints(str(tmp_path / "checkpoints")).all_steps() == [2]


def test_a_second_run_on_a_live_workdir_fails_naming_the_process(tmp_path):
  import subprocess
  import sys
  import time

  from conftest import ROOT
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom dcgan_jax import workdir\n"
       "with workdir.lock(sys.argv[1]) as lock:\n  lock.announce()\n"
       "  print('locked', flush=True)\n  time.sleep(600)\n", str(tmp_path)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.WorkdirError,
                       match=rf"workdir '{tmp_path}' is in use by another training run "
                             rf"\(pid {holder.pid} on host .*\). Wait for it to finish or "
                             "stop it, or pass another --workdir"):
      train.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # nothing of its own was opened
  finally:
    holder.kill()  # a crash: the lock goes with the process
    holder.wait()
  time.sleep(0.1)
  state = train.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path))
  assert int(state.step) == 1
  # Hosts of one run share the workdir: only the chief holds the lock.
  with workdir.lock(str(tmp_path)), workdir.lock(str(tmp_path), holder=False):
    pass
