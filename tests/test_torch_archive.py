import collections
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from dcgan_jax import torch_archive


def _state():
  rng = np.random.default_rng(0)
  return collections.OrderedDict([
      ("main.0.weight", rng.standard_normal((4, 3, 5, 5)).astype(np.float32)),
      ("main.1.running_var", np.abs(rng.standard_normal(3)).astype(np.float64)),
      ("main.1.num_batches_tracked", np.array(7, np.int64)),
      ("half", np.arange(6, dtype=np.float16).reshape(2, 3)),
      ("mask", np.array([True, False])),
  ])


def test_round_trip(tmp_path):
  state = _state()
  torch_archive.save_state_dict(str(tmp_path / "m.pth"), state)
  out = torch_archive.load(str(tmp_path / "m.pth"))
  assert isinstance(out, collections.OrderedDict) and list(out) == list(state)
  for k, v in state.items():
    assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
    np.testing.assert_array_equal(out[k], v)


def test_strided_storage_view(tmp_path):
  # A tensor that views a storage with an offset and transposed strides, as
  # torch writes for t[1:].T: rebuilt from (storage, offset, size, stride).
  storage = np.arange(12, dtype=np.float32)
  view = torch_archive._rebuild_tensor(storage, 4, (4, 2), (1, 4))
  np.testing.assert_array_equal(view, storage[4:].reshape(2, 4).T)


def test_rejects_non_archives_and_unknown_globals(tmp_path):
  (tmp_path / "x.pth").write_bytes(b"\x80\x02not a zip")
  with pytest.raises(torch_archive.TorchArchiveError, match="not a zip"):
    torch_archive.load(str(tmp_path / "x.pth"))
  import pickle
  evil = pickle.dumps(shutil.rmtree, protocol=2)
  with zipfile.ZipFile(tmp_path / "e.pth", "w") as zf:
    zf.writestr("e/data.pkl", evil)
  with pytest.raises(torch_archive.TorchArchiveError, match="shutil"):
    torch_archive.load(str(tmp_path / "e.pth"))


def test_torch_reads_what_we_write_and_we_read_what_torch_writes(tmp_path):
  """With torch installed (not a dependency): both directions agree."""
  torch = pytest.importorskip("torch")
  state = _state()
  torch_archive.save_state_dict(str(tmp_path / "ours.pth"), state)
  theirs = torch.load(str(tmp_path / "ours.pth"))
  for k, v in state.items():
    np.testing.assert_array_equal(theirs[k].numpy(), v)
  m = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 3, 4, 2, 1, bias=False),
                          torch.nn.BatchNorm2d(3))
  torch.save(m.state_dict(), str(tmp_path / "torch.pth"))
  ours = torch_archive.load(str(tmp_path / "torch.pth"))
  for k, v in m.state_dict().items():
    np.testing.assert_array_equal(ours[k], v.numpy())


def test_torch_in_a_venv(tmp_path):
  """The same check through a torch venv when one exists here (/tmp/torch-venv)."""
  py = "/tmp/torch-venv/bin/python"
  if shutil.which(py) is None:
    pytest.skip("no torch venv")
  state = _state()
  torch_archive.save_state_dict(str(tmp_path / "ours.pth"), state)
  code = ("import torch,sys; sd=torch.load(sys.argv[1]); "
          "print(float(sd['main.0.weight'].sum()), int(sd['main.1.num_batches_tracked']), "
          "tuple(sd['main.1.num_batches_tracked'].shape))")
  out = subprocess.run([py, "-c", code, str(tmp_path / "ours.pth")], capture_output=True,
                       text=True, check=True, timeout=120).stdout.split()
  assert abs(float(out[0]) - float(state["main.0.weight"].sum())) < 1e-3
  assert out[1] == "7" and out[2] == "()"
