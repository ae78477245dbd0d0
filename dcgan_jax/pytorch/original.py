"""The PyTorch original's trained nets (``netg_*.pth``, ``netd_*.pth``) as Flax variables.

The original AnimeGAN wraps each net in ``self.main = nn.Sequential(...)``:

  netg: main.0 ConvT(nz, 8ngf)   main.1 BN   (main.2 ReLU)
        main.3 ConvT(8ngf, 4ngf) main.4 BN  ... main.9 ConvT(2ngf, ngf) main.10 BN
        main.12 ConvT(ngf, 3, k5 s3 p1)  (main.13 Tanh)
  netd: main.0 Conv(3, ndf, k5 s3 p1)  (main.1 LeakyReLU)
        main.2 Conv(ndf, 2ndf) main.3 BN ... main.8 Conv(4ndf, 8ndf) main.9 BN
        main.11 Conv(8ndf, 1, k4 s1 p0)  (main.12 Sigmoid)

Keys are accepted with or without ``main.`` and a ``module.`` (DataParallel)
prefix. Layouts: a torch ConvTranspose2d weight is (in, out, k, k) and our
``ConvTranspose`` kernel is the HWIO kernel of the forward convolution it
transposes, (k, k, out, in); a torch Conv2d weight is (out, in, k, k), ours
HWIO (k, k, in, out). Both are ``weight.transpose(2, 3, 1, 0)``, no flip.
BatchNorm: weight -> scale, bias -> bias, running_mean -> mean,
running_var -> var (num_batches_tracked is dropped). The original's D ends in
a Sigmoid, ours returns the logit before it. No torch needed.
"""

from __future__ import annotations

import re

import numpy as np

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
    raise ValueError(f"{path}: expected a state dict (torch.save(net.state_dict(), "
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
          raise ValueError(f"{path}: missing {key!r} (BatchNorm {name}); is this the "
                           "original AnimeGAN net? Keys found: " + ", ".join(sorted(state)))
        variables[col].setdefault(name, {})[flax_name] = state[key].astype(np.float32)
        used.add(key)
      used.add(f"{idx}.num_batches_tracked")
    else:
      key = f"{idx}.weight"
      if key not in state or state[key].ndim != 4:
        raise ValueError(f"{path}: missing 4-d {key!r} (convolution {name}); is this the "
                         "original AnimeGAN net? Keys found: " + ", ".join(sorted(state)))
      variables["params"][name] = {
          "kernel": np.ascontiguousarray(state[key].transpose(2, 3, 1, 0), np.float32)}
      used.add(key)
  if extra := sorted(set(state) - used):
    raise ValueError(f"{path}: unexpected keys {extra} (the original's convolutions "
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
