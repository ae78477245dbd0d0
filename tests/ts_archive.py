"""Writing TorchScript-style archives by hand (no torch) for the tests.

``torch.jit.save`` pickles a module as ``GLOBAL __torch__.<module> <Class>``,
``EMPTY_TUPLE NEWOBJ``, then ``BUILD`` with a dict of its attributes:
submodules (the same again), tensors (persistent ids into ``data/``), ints,
and typed lists (``torch.jit._pickle.build_intlist``). These helpers write
exactly that, through torch_archive's own pickler.
"""

import io
import pickle
import zipfile

import numpy as np

from dcgan_jax.pytorch import archive as ta


class Module:
  """A TorchScript object: qualified class name and attribute dict."""

  def __init__(self, cls: str, **attrs):
    self.cls, self.attrs = cls, attrs


class IntList:
  def __init__(self, items):
    self.items = list(items)

  def __reduce__(self):
    return (ta._Global("torch.jit._pickle", "build_intlist"), (self.items,))


class _Pickler(ta._Pickler):
  dispatch = dict(ta._Pickler.dispatch)

  def __init__(self, file):
    super().__init__(file, protocol=2)
    self.storages = []

  def save_module(self, obj):
    module, name = obj.cls.rsplit(".", 1)
    self.save(ta._Global(module, name))
    self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
    self.memoize(obj)
    state = {"training": False, "_is_full_backward_hook": None}
    for k, v in obj.attrs.items():
      if isinstance(v, np.ndarray):
        st = ta._Storage(str(len(self.storages)), np.ascontiguousarray(v).reshape(-1))
        self.storages.append(st)
        state[k] = ta._Tensor(st, tuple(v.shape))
      else:
        state[k] = v
    self.save(state)
    self.write(pickle.BUILD)

  dispatch[Module] = save_module


def save_script_module(path: str, root: Module, name: str = "out_jit_module") -> None:
  """Writes ``root`` as the data.pkl + data/ records of a TorchScript archive."""
  buf = io.BytesIO()
  p = _Pickler(buf)
  p.dump(root)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{name}/data.pkl", buf.getvalue())
    zf.writestr(f"{name}/constants.pkl", pickle.dumps((), protocol=2))
    zf.writestr(f"{name}/version", "3\n")
    for st in p.storages:
      zf.writestr(f"{name}/data/{st.key}", st.array.tobytes())
