import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

SHARED_FACES = os.path.join(ROOT, "..", "shared", "data", "anime-faces-96", "face")


def tiny_config(**overrides):
  """The demo config shrunk to seconds: 8-wide nets, batch 8, 64 faces."""
  from configs import demo
  c = demo.get_config()
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
