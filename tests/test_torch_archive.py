import collections
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import ts_archive

from dcgan_jax.pytorch import archive


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
  archive.save_state_dict(str(tmp_path / "m.pth"), state)
  out = archive.load(str(tmp_path / "m.pth"))
  assert isinstance(out, collections.OrderedDict) and list(out) == list(state)
  for k, v in state.items():
    assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
    np.testing.assert_array_equal(out[k], v)


def test_strided_storage_view(tmp_path):
  # A tensor that views a storage with an offset and transposed strides, as
  # torch writes for t[1:].T: rebuilt from (storage, offset, size, stride).
  storage = np.arange(12, dtype=np.float32)
  view = archive._rebuild_tensor(storage, 4, (4, 2), (1, 4))
  np.testing.assert_array_equal(view, storage[4:].reshape(2, 4).T)


def test_rejects_non_archives_and_unknown_globals(tmp_path):
  (tmp_path / "x.pth").write_bytes(b"\x80\x02not a zip")
  with pytest.raises(archive.TorchArchiveError, match="not a zip"):
    archive.load(str(tmp_path / "x.pth"))
  import pickle
  evil = pickle.dumps(shutil.rmtree, protocol=2)
  with zipfile.ZipFile(tmp_path / "e.pth", "w") as zf:
    zf.writestr("e/data.pkl", evil)
  with pytest.raises(archive.TorchArchiveError, match="shutil"):
    archive.load(str(tmp_path / "e.pth"))


def test_torch_reads_what_we_write_and_we_read_what_torch_writes(tmp_path):
  """With torch installed (not a dependency): both directions agree."""
  torch = pytest.importorskip("torch")
  state = _state()
  archive.save_state_dict(str(tmp_path / "ours.pth"), state)
  theirs = torch.load(str(tmp_path / "ours.pth"))
  for k, v in state.items():
    np.testing.assert_array_equal(theirs[k].numpy(), v)
  m = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 3, 4, 2, 1, bias=False),
                          torch.nn.BatchNorm2d(3))
  torch.save(m.state_dict(), str(tmp_path / "torch.pth"))
  ours = archive.load(str(tmp_path / "torch.pth"))
  for k, v in m.state_dict().items():
    np.testing.assert_array_equal(ours[k], v.numpy())


def test_torch_in_a_venv(tmp_path):
  """The same check through a torch venv when one exists here (/tmp/torch-venv)."""
  py = "/tmp/torch-venv/bin/python"
  if shutil.which(py) is None:
    pytest.skip("no torch venv")
  state = _state()
  archive.save_state_dict(str(tmp_path / "ours.pth"), state)
  code = ("import torch,sys; sd=torch.load(sys.argv[1]); "
          "print(float(sd['main.0.weight'].sum()), int(sd['main.1.num_batches_tracked']), "
          "tuple(sd['main.1.num_batches_tracked'].shape))")
  out = subprocess.run([py, "-c", code, str(tmp_path / "ours.pth")], capture_output=True,
                       text=True, check=True, timeout=120).stdout.split()
  assert abs(float(out[0]) - float(state["main.0.weight"].sum())) < 1e-3
  assert out[1] == "7" and out[2] == "()"


def _tiny_script_module():
  rng = np.random.default_rng(1)
  conv = ts_archive.Module("__torch__.net.Conv2dLayer",
                           weight=rng.standard_normal((4, 3, 1, 7)).astype(np.float32),
                           beta=np.arange(4, dtype=np.float32), stride=1,
                           padding=ts_archive.IntList([0, 3]))
  seq = ts_archive.Module("__torch__.torch.nn.modules.container.Sequential", conv=conv)
  return ts_archive.Module("__torch__.net.Net", layers=seq), conv


def test_torchscript_objects_and_state_dict(tmp_path):
  root, conv = _tiny_script_module()
  path = str(tmp_path / "m.pt")
  ts_archive.save_script_module(path, root)
  net = archive.load(path)
  assert isinstance(net, archive.ScriptObject) and net.class_name == "__torch__.net.Net"
  layer = net.state["layers"].state["conv"]
  assert layer.class_name == "__torch__.net.Conv2dLayer"
  np.testing.assert_array_equal(layer.state["weight"], conv.attrs["weight"])
  assert layer.state["padding"] == [0, 3] and layer.state["stride"] == 1
  flat = archive.state_dict(path)
  assert sorted(flat) == ["layers.conv.beta", "layers.conv.padding", "layers.conv.stride",
                          "layers.conv.weight"]
  np.testing.assert_array_equal(flat["layers.conv.beta"], np.arange(4))


def test_state_dict_of_a_plain_and_a_nested_archive(tmp_path):
  state = _state()
  archive.save_state_dict(str(tmp_path / "m.pth"), state)
  flat = archive.state_dict(str(tmp_path / "m.pth"))
  assert list(flat) == list(state)


def test_torchscript_written_by_torch_in_a_venv(tmp_path):
  """torch.jit.save of a small scripted module reads back (torch venv only)."""
  py = "/tmp/torch-venv/bin/python"
  if shutil.which(py) is None:
    pytest.skip("no torch venv")
  code = """
import sys, torch
class Layer(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.weight = torch.nn.Parameter(torch.arange(24.).reshape(2, 3, 1, 4))
    self.padding = [0, 2]
    self.stride = 2
  def forward(self, x):
    return torch.conv2d(x, self.weight, None, [self.stride, self.stride], self.padding)
class Net(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.layers = torch.nn.Sequential(Layer(), torch.nn.BatchNorm2d(2))
  def forward(self, x):
    return self.layers(x)
torch.jit.save(torch.jit.script(Net().eval()), sys.argv[1])
"""
  path = str(tmp_path / "net.pt")
  (tmp_path / "make.py").write_text(code)  # torch.jit.script reads the source file
  subprocess.run([py, str(tmp_path / "make.py"), path], check=True, timeout=300,
                 capture_output=True)
  flat = archive.state_dict(path)
  np.testing.assert_array_equal(flat["layers.0.weight"],
                                np.arange(24.0, dtype=np.float32).reshape(2, 3, 1, 4))
  assert flat["layers.0.padding"] == [0, 2] and flat["layers.0.stride"] == 2
  np.testing.assert_array_equal(flat["layers.1.running_var"], np.ones(2, np.float32))
