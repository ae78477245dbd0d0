"""The PyTorch original's ``netg`` / ``netd`` state dicts as Flax variables, and back.

The original wraps each net in ``main = nn.Sequential(...)`` (``G_LAYERS`` and
``D_LAYERS`` give each layer's index there); keys may carry ``main.`` and a
``module.`` (DataParallel) prefix. Both torch conv weights become our HWIO
kernels by ``transpose(2, 3, 1, 0)``, without a flip; BatchNorm's weight,
bias, running_mean and running_var are scale, bias, mean and var. D's final
Sigmoid is left to the loss. No torch needed.
"""

from __future__ import annotations

import re

import numpy as np

from dcgan_jax.errors import FileError
from dcgan_jax.pytorch import archive

# Flax module name -> index of its layer in the original's nn.Sequential.
G_LAYERS = {"convt0": 0, "bn0": 1, "convt1": 3, "bn1": 4, "convt2": 6, "bn2": 7,
            "convt3": 9, "bn3": 10, "convt4": 12}
D_LAYERS = {"conv0": 0, "conv1": 2, "bn1": 3, "conv2": 5, "bn2": 6, "conv3": 8,
            "bn3": 9, "conv4": 11}
_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _normalise_keys(state: dict, path: str) -> dict[str, np.ndarray]:
  if not isinstance(state, dict):
    raise FileError(f"{path}: expected a state dict (torch.save(net.state_dict(), "
                     f"path)), found a {type(state).__name__}.")
  out = {}
  for key, value in state.items():
    short = re.sub(r"^(module\.)?(main\.)?", "", key)
    out[short] = np.asarray(value)
  return out


def _convert(state: dict[str, np.ndarray], layers: dict[str, int], path: str) -> dict:
  variables: dict = {"params": {}, "batch_stats": {}}
  used = set()
  for name, idx in layers.items():
    if name.startswith("bn"):
      for torch_name, (col, flax_name) in _BN.items():
        key = f"{idx}.{torch_name}"
        if key not in state:
          raise FileError(f"{path}: missing {key!r} (BatchNorm {name}); is this the "
                           "original AnimeGAN net? Keys found: " + ", ".join(sorted(state)))
        variables[col].setdefault(name, {})[flax_name] = state[key].astype(np.float32)
        used.add(key)
      used.add(f"{idx}.num_batches_tracked")
    else:
      key = f"{idx}.weight"
      if key not in state or state[key].ndim != 4:
        raise FileError(f"{path}: missing 4-d {key!r} (convolution {name}); is this the "
                         "original AnimeGAN net? Keys found: " + ", ".join(sorted(state)))
      variables["params"][name] = {
          "kernel": np.ascontiguousarray(state[key].transpose(2, 3, 1, 0), np.float32)}
      used.add(key)
  if extra := sorted(set(state) - used):
    raise FileError(f"{path}: unexpected keys {extra} (the original's convolutions "
                     "have no bias); is this the original AnimeGAN net?")
  return variables


def netg_variables(state: dict, path: str = "netg") -> tuple[dict, int, int]:
  """Flax Generator variables from the original's netg state dict.

  Args:
    state: name -> array (``archive.load`` of a ``netg_*.pth``).
    path: named in errors.

  Returns:
    (variables {'params', 'batch_stats'}, nz, ngf).
  """
  state = _normalise_keys(state, path)
  variables = _convert(state, G_LAYERS, path)
  nz, width = state["0.weight"].shape[:2]
  return variables, int(nz), int(width) // 8


def netd_variables(state: dict, path: str = "netd") -> tuple[dict, int]:
  """Flax Discriminator variables from the original's netd state dict.

  Returns:
    (variables {'params', 'batch_stats'}, ndf).
  """
  state = _normalise_keys(state, path)
  variables = _convert(state, D_LAYERS, path)
  return variables, int(state["0.weight"].shape[0])


def load_netg(path: str) -> tuple[dict, int, int]:
  """``netg_variables`` of the .pth file at ``path``."""
  return netg_variables(archive.load(path), path)


def load_netd(path: str) -> tuple[dict, int]:
  """``netd_variables`` of the .pth file at ``path``."""
  return netd_variables(archive.load(path), path)


def save_netg(path: str, variables: dict) -> None:
  """Writes G's ``variables`` as the original's ``netg`` state dict (``torch.load`` reads it)."""
  archive.save_state_dict(path, to_torch_state_dict(variables, G_LAYERS), "netg")


def save_netd(path: str, variables: dict) -> None:
  """Writes D's ``variables`` (the original's D: BatchNorm, no spectral norm) as ``netd``."""
  archive.save_state_dict(path, to_torch_state_dict(variables, D_LAYERS), "netd")


def to_torch_state_dict(variables: dict, layers: dict[str, int]) -> dict[str, np.ndarray]:
  """The inverse mapping: Flax variables -> the original's state dict (numpy).

  Args:
    variables: {'params', 'batch_stats'} of our Generator or Discriminator.
    layers: ``G_LAYERS`` or ``D_LAYERS``.

  Returns:
    'main.N.weight'... -> arrays, as the original's ``state_dict()``.
  """
  out = {}
  for name, idx in layers.items():
    if name.startswith("bn"):
      for torch_name, (col, flax_name) in _BN.items():
        out[f"main.{idx}.{torch_name}"] = np.asarray(variables[col][name][flax_name])
      out[f"main.{idx}.num_batches_tracked"] = np.array(0, np.int64)
    else:
      kernel = np.asarray(variables["params"][name]["kernel"])
      out[f"main.{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
  return out
