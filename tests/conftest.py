import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# One persistent XLA cache for the session and the processes it starts: the
# same tiny nets are compiled by many tests. Set before JAX is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="dcgan-jax-test-xla-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

# Compilations, counted from JAX's own events: a backend compile or, with the
# cache above, an executable loaded from it (either means a new executable).
COMPILATIONS: list[str] = []


def _count_compilation(name, secs, **kw):
  del secs, kw
  if "backend_compile" in name or "cache_retrieval" in name:
    COMPILATIONS.append(name)


def _listen():
  from jax import monitoring
  monitoring.register_event_duration_secs_listener(_count_compilation)


_listen()

SHARED_FACES = os.path.join(ROOT, "..", "shared", "data", "anime-faces-96", "face")


def load_config(name: str):
  """configs/<name>.py, loaded by path as main.py loads it."""
  from dcgan_jax import config_lib
  return config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))


def tiny_config(**overrides):
  """The demo config shrunk to seconds: 8-wide nets, batch 8, 64 faces."""
  c = load_config("demo")
  c.ngf = c.ndf = 8
  c.batch_size = 8
  c.synthetic_size = 64
  c.num_train_steps = 3
  c.log_every = 1
  c.plot_every = 3
  c.num_plot = 4
  c.update(overrides)
  return c


@pytest.fixture
def shared_faces():
  if not os.path.isdir(SHARED_FACES):
    pytest.skip("../shared/data/anime-faces-96 is absent (fresh clone)")
  return SHARED_FACES


def train_call(config):
  """(runner, the compiled call, the empty summary placed) as train_and_evaluate builds them."""
  from dcgan_jax import parallel, summaries, train
  runner = parallel.make_runner(config.parallel)
  return runner, train.make_train_call(config, runner), runner.put_state(
      summaries.empty(config.loss))


def parse_main_flags(argv, monkeypatch):
  """Parses ``argv`` as main.py's flags in this process; returns the ``main`` module."""
  from absl import flags
  from absl import logging as absl_logging
  monkeypatch.setattr(sys, "argv", argv)
  import main
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # an earlier parse's overrides: they are defined anew
  flags.FLAGS(argv)
  absl_logging.set_verbosity(absl_logging.INFO)  # parsing set it to --verbosity's WARNING
  return main
