"""XLA:CPU flags that make the DCGAN step faster (measured in bench/README.md).

XLA reads ``XLA_FLAGS`` when the first backend starts (the first computation,
not ``import jax``), so ``use_fast_cpu_flags()`` must run before that. Flags
only name the CPU backend: on a GPU they change nothing.
"""

from __future__ import annotations

import os

# oneDNN convolutions/matmuls instead of Eigen's: faster convs on x86 with
# AVX-512 (bench/layers.py: D.conv2 fwd+bwd 326 -> 205 ms at batch 64).
# YNNPACK only for dots and reductions: jaxlib 0.10 also hands it every
# convolution by default, and its convolutions made the whole step 1.3x
# slower here (46 -> 60 img/s without them at batch 64; bench/README.md).
FAST_CPU_FLAGS = (
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce",
)


def use_fast_cpu_flags(env=os.environ) -> str:
  """Adds ``FAST_CPU_FLAGS`` to ``XLA_FLAGS``, keeping any the user set.

  A flag the user already names (with any value) is left as given, so
  ``XLA_FLAGS=--xla_cpu_use_onednn=false`` opts out.

  Returns:
    The resulting ``XLA_FLAGS``.
  """
  current = env.get("XLA_FLAGS", "")
  named = {f.split("=")[0] for f in current.split()}
  extra = [f for f in FAST_CPU_FLAGS if f.split("=")[0] not in named]
  env["XLA_FLAGS"] = " ".join([current, *extra]).strip()
  return env["XLA_FLAGS"]
