"""Procedural cartoon faces: the embedded dataset of the demo and the tests.

Each face is a head (skin-toned ellipse) framed by hair (a larger ellipse
behind the head plus a fringe), two large eyes (white, coloured iris, dark
pupil, a highlight), and a mouth, on a plain background. Colours, sizes and
positions vary per image; the whole set is a pure function of the seed.
Only numpy is needed.
"""

from __future__ import annotations

import numpy as np

_SKIN = np.array([[255, 224, 196], [250, 210, 180], [240, 195, 160],
                  [255, 235, 215], [225, 175, 140]], np.float32)


def _ellipse(yy, xx, cy, cx, ry, rx):
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def draw_face(rng: np.random.Generator, size: int = 96) -> np.ndarray:
  """Draws one face as a (size, size, 3) uint8 array."""
  s = size / 96.0
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  img = np.empty((size, size, 3), np.float32)
  img[:] = rng.uniform(60, 255, 3)  # background

  cx = size / 2 + rng.uniform(-6, 6) * s
  cy = size / 2 + rng.uniform(-2, 8) * s
  ry, rx = rng.uniform(30, 38) * s, rng.uniform(24, 31) * s
  hair = rng.uniform(0, 255, 3)
  # Hair behind the head, then the face, then a fringe over the forehead.
  img[_ellipse(yy, xx, cy - 4 * s, cx, ry + 8 * s, rx + 7 * s)] = hair
  img[_ellipse(yy, xx, cy, cx, ry, rx)] = _SKIN[rng.integers(len(_SKIN))]
  fringe = _ellipse(yy, xx, cy - ry * 0.75, cx, ry * 0.45, rx * 1.05)
  img[fringe & (yy < cy - ry * 0.3)] = hair

  eye_y = cy + rng.uniform(-2, 4) * s
  gap = rng.uniform(9, 13) * s
  ery, erx = rng.uniform(6, 9) * s, rng.uniform(4.5, 6.5) * s
  iris = rng.uniform(0, 200, 3)
  for ex in (cx - gap, cx + gap):
    img[_ellipse(yy, xx, eye_y, ex, ery, erx)] = 255.0
    img[_ellipse(yy, xx, eye_y + ery * 0.15, ex, ery * 0.8, erx * 0.8)] = iris
    img[_ellipse(yy, xx, eye_y + ery * 0.2, ex, ery * 0.4, erx * 0.4)] = 20.0
    img[_ellipse(yy, xx, eye_y - ery * 0.35, ex - erx * 0.3, ery * 0.2, erx * 0.25)] = 255.0

  my = eye_y + rng.uniform(13, 19) * s
  mw, mh = rng.uniform(3, 7) * s, rng.uniform(1.2, 3.5) * s
  img[_ellipse(yy, xx, my, cx, mh, mw)] = (170.0, 40.0, 50.0)
  # Soft edges and a little grain, as in drawn and compressed images: a GAN's
  # discriminator otherwise wins at once on perfectly flat colours.
  img = _box_blur(img)
  img += rng.normal(0.0, 4.0, img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _box_blur(img: np.ndarray) -> np.ndarray:
  """3x3 box filter with edge padding."""
  p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = img.shape[:2]
  return sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def make_faces(num: int, size: int = 96, seed: int = 0) -> np.ndarray:
  """Returns ``num`` faces as a (num, size, size, 3) uint8 array."""
  out = np.empty((num, size, size, 3), np.uint8)
  for i in range(num):
    # One generator per image: face i is the same whatever ``num`` is.
    out[i] = draw_face(np.random.default_rng([seed, i]), size)
  return out
