"""Procedurally rendered shapes with known attributes (shape, colour, size, position), the
offline data for compositional generation."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from ebm_jax.data.images import _Arrays


# ---------------------------------------------------------------- procedural shapes
SHAPES = ("circle", "square", "triangle")
SHAPE_COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right")
SHAPE_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "shape": SHAPES, "color": SHAPE_COLORS, "size": SIZES, "position": POSITIONS}
_RGB = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)], np.float32)
# Half-extent of a shape as a fraction of the image side. With the centre jitter below, a
# large shape stays inside its own quadrant, so the position label is unambiguous.
_HALF = np.array([0.09, 0.18], np.float32)
_HALF_JITTER = 0.1  # dataset half-extents are _HALF * U(1 - j, 1 + j)
_CENTRE_JITTER = 0.03  # dataset centres are the quadrant centre + U(-j, j) per axis
_QUADRANT_XY = np.array([(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)], np.float32)
_SQUARE_HALF = 0.8  # a square's half-side relative to the circle radius (similar areas)
_SUPERSAMPLE = 4  # anti-aliasing: coverage of 4 x 4 sub-pixel samples
_SHAPES_SEED = 20210101  # the dataset is fixed: the same images on every machine and run
_SHAPES_SIZE = {"train": 10_000, "test": 2_000}


def _render(shape_ids: np.ndarray, color_ids: np.ndarray, centres: np.ndarray,
            halves: np.ndarray, image_size: int) -> np.ndarray:
  """Renders anti-aliased shapes on black: (m,) ids, (m, 2) centres (x, y), (m,) half-extents.

  Coordinates are fractions of the image side, y pointing down. Each shape is a union of
  horizontal spans, one per sub-pixel row, so the 4 x 4 supersampled coverage is counted per
  (sub-row, pixel) in closed form instead of testing all sub-pixels.
  """
  k = _SUPERSAMPLE
  ss = image_size * k
  m = shape_ids.shape[0]
  out = np.empty((m, image_size, image_size, 3), np.uint8)
  rows = (np.arange(ss, dtype=np.float32) + 0.5) / ss  # sub-row centres
  first = np.arange(image_size, dtype=np.float32) * k  # first sub-column of each pixel
  for start in range(0, m, 1024):  # chunks bound the temporaries to ~ 20 MB
    sl = slice(start, start + 1024)
    cx, cy = centres[sl, 0:1], centres[sl, 1:2]
    r = halves[sl, None]
    shape = shape_ids[sl, None]
    dy = rows[None, :] - cy  # (c, ss)
    circle = np.where(np.abs(dy) <= r, np.sqrt(np.maximum(r * r - dy * dy, 0.0)), -1.0)
    square = np.where(np.abs(dy) <= _SQUARE_HALF * r, _SQUARE_HALF * r, -1.0)
    triangle = np.where(np.abs(dy) <= r, (dy + r) / 2, -1.0)  # apex up, base 2r wide
    half_width = np.select([shape == 0, shape == 1], [circle, square], triangle)
    # Sub-columns j (centres (j + 0.5) / ss) inside the span [cx - w, cx + w] of each sub-row.
    lo = np.ceil((cx - half_width) * ss - 0.5)
    hi = np.floor((cx + half_width) * ss - 0.5)
    lo = np.where(half_width < 0, np.inf, lo)
    count = np.clip(np.minimum(hi[..., None], first + (k - 1)) -
                    np.maximum(lo[..., None], first) + 1, 0, k)  # (c, ss, S)
    cover = count.reshape(-1, image_size, k, image_size).sum(axis=2) / (k * k)
    rgb = _RGB[color_ids[sl]][:, None, None, :]
    out[sl] = np.rint(cover[..., None] * rgb).astype(np.uint8)
  return out


def render_shape(shape: str, color: str, size: str, position: str,
                 image_size: int = 32) -> np.ndarray:
  """Renders one shape at its nominal size and quadrant centre: uint8 (S, S, 3)."""
  for attribute, value in (("shape", shape), ("color", color), ("size", size),
                           ("position", position)):
    if value not in SHAPE_ATTRIBUTES[attribute]:
      raise ValueError(f"{attribute}={value!r} not in {SHAPE_ATTRIBUTES[attribute]}")
  return _render(np.array([SHAPES.index(shape)]), np.array([SHAPE_COLORS.index(color)]),
                 _QUADRANT_XY[[POSITIONS.index(position)]],
                 _HALF[[SIZES.index(size)]], image_size)[0]


@functools.lru_cache(maxsize=4)
def _shapes_arrays(split: str, image_size: int) -> _Arrays:
  """The fixed shapes dataset: i.i.d. uniform attributes, small jitter of centre and size."""
  n = _SHAPES_SIZE[split]
  rng = np.random.default_rng([_SHAPES_SEED, tuple(_SHAPES_SIZE).index(split)])
  labels = {a: rng.integers(len(v), size=n) for a, v in SHAPE_ATTRIBUTES.items()}
  centres = (_QUADRANT_XY[labels["position"]] +
             rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER, (n, 2)).astype(np.float32))
  halves = _HALF[labels["size"]] * rng.uniform(1 - _HALF_JITTER, 1 + _HALF_JITTER,
                                               n).astype(np.float32)
  images = _render(labels["shape"], labels["color"], centres, halves, image_size)
  return _Arrays(images, labels, SHAPE_ATTRIBUTES, 256)
