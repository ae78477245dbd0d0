"""Reading (and writing) PyTorch's zip archives without torch.

``torch.save`` writes a zip file holding ``<name>/data.pkl`` (a pickle whose
tensors refer, by persistent id, to raw storages) and one record per storage
in ``<name>/data/<key>``. ``load`` unpickles it with tensors rebuilt as numpy
arrays. Only an allow-list of globals is resolved (tensors, storages,
OrderedDict, TorchScript's ``__torch__`` objects as plain records), so loading
an archive never runs code from it.

``save_state_dict`` writes the same format for a flat dict of arrays: tests
and tools can make archives that ``torch.load`` reads, with no torch installed.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import zipfile
from typing import Any

import numpy as np

from dcgan_jax import fs
from dcgan_jax.errors import UserError

try:
  import ml_dtypes
  _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover (jax depends on ml_dtypes)
  _BF16 = None

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "BFloat16Storage": _BF16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_STORAGE_NAMES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items() if v is not None}


class TorchArchiveError(UserError, ValueError):
  """The file is not a torch zip archive, or holds something we don't read."""


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class ScriptObject:
  """A TorchScript ``__torch__.*`` object: its class name and its state.

  TorchScript pickles a module as ``NEWOBJ`` of its class (which needs a real
  type: ``script_class`` makes one subclass per class name) followed by
  ``BUILD`` with a dict of its attributes (submodules, parameters, ints,
  lists), which lands in ``state``.
  """

  class_name: str = ""
  state: Any = None

  def __init__(self, class_name: str | None = None):
    if class_name is not None:
      self.class_name = class_name

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"ScriptObject({self.class_name})"


@functools.cache
def script_class(qualified_name: str) -> type:
  """The ``ScriptObject`` subclass standing for TorchScript class ``qualified_name``."""
  return type(qualified_name.rsplit(".", 1)[-1], (ScriptObject,),
              {"class_name": qualified_name})


def _build_list(items, *_):
  return list(items)


# TorchScript's typed containers (torch.jit._pickle): the pickle holds the
# items; the functions only restore the static type, which numpy lacks.
_JIT_PICKLE = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
               "build_empty_list", "build_empty_dict", "restore_type_tag"}


def _rebuild_tensor(storage, offset, size, stride, *_):
  if not size:
    return storage[offset].copy()
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=[s * itemsize for s in stride])
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, read_record):
    super().__init__(file)
    self._read_record = read_record

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module.startswith("__torch__"):
      return script_class(f"{module}.{name}")
    if module == "torch.jit._pickle" and name in _JIT_PICKLE:
      return _JIT_FUNCS[name]
    raise TorchArchiveError(f"unsupported object in archive: {module}.{name}")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise TorchArchiveError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, _numel = pid
    data = self._read_record(str(key))
    return np.frombuffer(data, storage_type.dtype).copy()


def _archive_prefix(zf: zipfile.ZipFile, pickle_name: str) -> str:
  for n in zf.namelist():
    if n.endswith("/" + pickle_name) and n.count("/") == 1:
      return n.split("/")[0]
  raise TorchArchiveError(f"{zf.filename}: no {pickle_name} inside: not a torch zip archive "
                          "(torch.save with the default zip format, torch>=1.6)")


def load(path: str, pickle_name: str = "data.pkl", records: str = "data") -> Any:
  """Loads a torch zip archive (``.pth``/``.pt``) with tensors as numpy arrays.

  Args:
    path: the archive.
    pickle_name: the pickle to read (``data.pkl``; TorchScript archives also
      hold ``constants.pkl``).
    records: the folder its storages live in (``data``; ``constants`` for
      TorchScript constants).

  Returns:
    The unpickled object: for a state dict, an OrderedDict name -> np.ndarray.
  """
  try:
    zf = zipfile.ZipFile(io.BytesIO(fs.path(path).read_bytes()) if fs.is_remote(path) else path)
  except OSError as e:
    raise TorchArchiveError(f"{path}: cannot be read ({e.strerror or e}).") from e
  except zipfile.BadZipFile as e:
    raise TorchArchiveError(
        f"{path}: not a zip archive. Legacy (pre-1.6, non-zip) torch files are not "
        "supported: re-save with torch.save(obj, path) in a recent torch.") from e
  with zf:
    prefix = _archive_prefix(zf, pickle_name)
    read = lambda key: zf.read(f"{prefix}/{records}/{key}")
    with zf.open(f"{prefix}/{pickle_name}") as f:
      return _Unpickler(io.BytesIO(f.read()), read).load()


def _restore_type_tag(value, _type_str):
  return value


_JIT_FUNCS = {"build_intlist": _build_list, "build_tensorlist": _build_list,
              "build_doublelist": _build_list, "build_boollist": _build_list,
              "build_empty_list": lambda *_: [], "build_empty_dict": lambda *_: {},
              "restore_type_tag": _restore_type_tag}


def state_dict(path: str) -> dict[str, Any]:
  """A flat ``name -> value`` view of an archive, whatever it pickled.

  A ``torch.save``d state dict comes back as it is; nested dicts (e.g. a
  checkpoint's ``{'state_dict': {...}}``) and TorchScript modules are
  flattened to dotted names, so a TorchScript export of a module yields the
  names its ``state_dict()`` would (``layers.conv.weight``, ...) together with
  its plain attributes (``layers.conv.stride``, ...), ``training`` flags and
  hook markers left out.

  Args:
    path: a ``.pth``/``.pt`` zip archive (``torch.save`` or ``torch.jit.save``).

  Returns:
    A dict from dotted names to numpy arrays (and ints/lists for attributes).
  """
  out: dict[str, Any] = {}

  def walk(obj, prefix):
    if isinstance(obj, ScriptObject):
      obj = obj.state
    if isinstance(obj, dict):
      for k, v in obj.items():
        if k in ("training", "_is_full_backward_hook"):
          continue
        walk(v, f"{prefix}{k}.")
    elif obj is not None:
      out[prefix[:-1]] = obj

  walk(load(path), "")
  return out


class _Global:
  """Pickles as a reference to ``module.name`` without importing it."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle wants reduce functions to be callable
    raise TypeError(f"{self.module}.{self.name} is a reference, not a function")


class _Storage:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Tensor:
  """Pickles as torch's ``_rebuild_tensor_v2(storage, 0, shape, stride, ...)``."""

  def __init__(self, storage: _Storage, shape: tuple[int, ...]):
    self.storage, self.shape = storage, shape

  def __reduce__(self):
    stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
    hooks = _Reduce(_Global("collections", "OrderedDict"), ())
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, 0, self.shape, stride, False, hooks))


class _Reduce:
  def __init__(self, func, args, items=None):
    self.func, self.args, self.items = func, args, items

  def __reduce__(self):
    return (self.func, self.args, None, None, self.items)


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit GLOBAL
  dispatch = dict(pickle._Pickler.dispatch)

  def save_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[_Global] = save_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", _STORAGE_NAMES[obj.array.dtype]),
              obj.key, "cpu", obj.array.size)
    return None


def save_state_dict(path: str, state: dict[str, np.ndarray], name: str = "archive") -> None:
  """Writes ``state`` as ``torch.save(OrderedDict of tensors)`` would.

  Args:
    path: the output file (``.pth``).
    state: parameter name -> array (float32/64/16, bfloat16, ints, bool).
    name: the archive's top folder (torch uses the file's stem).
  """
  storages, tensors = [], []
  for i, (k, v) in enumerate(state.items()):
    arr = np.asarray(v, order="C")  # (ascontiguousarray makes scalars 1-d)
    if arr.dtype not in _STORAGE_NAMES:
      raise TypeError(f"{k}: dtype {arr.dtype} has no torch storage type")
    st = _Storage(str(i), arr.reshape(-1))
    storages.append(st)
    tensors.append((k, _Tensor(st, tuple(arr.shape))))
  buf, out = io.BytesIO(), io.BytesIO()
  _Pickler(buf, protocol=2).dump(
      _Reduce(_Global("collections", "OrderedDict"), (), iter(tensors)))
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{name}/data.pkl", buf.getvalue())
    zf.writestr(f"{name}/byteorder", "little")
    for st in storages:
      zf.writestr(f"{name}/data/{st.key}", st.array.astype(st.array.dtype.newbyteorder("<"))
                  .tobytes())
    zf.writestr(f"{name}/version", "3\n")
  p = fs.path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_bytes(out.getvalue())
