"""2-D toy densities: samplers and exact log-densities (for comparing a learned density with
the truth)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
  from ebm_jax import settings as settings_lib

Batch = dict[str, np.ndarray]


# ---------------------------------------------------------------- 2-D toy densities
TOY_DENSITIES = ("8gaussians", "rings", "checkerboard", "two_moons")
_GAUSS_RADIUS, _GAUSS_STD = 2.0, 0.1  # 8 modes at distance 1.53 from each other, 15 std
_RING_RADII = np.array([0.5, 1.0, 1.5, 2.0])
_RING_STD = 0.08
_MOON_NOISE = 0.1


def sample_toy2d(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
  """Draws n i.i.d. float32 points (n, 2) from a toy density."""
  if name == "8gaussians":
    angle = 2 * np.pi * rng.integers(8, size=n) / 8
    centres = _GAUSS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], -1)
    x = centres + _GAUSS_STD * rng.standard_normal((n, 2))
  elif name == "rings":
    # A ring's probability is proportional to its length, so all rings are equally dense.
    ring = rng.choice(len(_RING_RADII), size=n, p=_RING_RADII / _RING_RADII.sum())
    radius = _RING_RADII[ring] + _RING_STD * rng.standard_normal(n)
    angle = rng.uniform(0, 2 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
  elif name == "checkerboard":
    # Black squares of the 4 x 4 board on [-2, 2]^2: cells (i, j) with i + j even.
    cell = rng.integers(8, size=n)
    i = cell // 2
    j = 2 * (cell % 2) + i % 2
    x = np.stack([i, j], -1) - 2 + rng.uniform(0, 1, (n, 2))
  elif name == "two_moons":
    t = rng.uniform(0, np.pi, n)
    lower = rng.integers(2, size=n).astype(bool)
    x = np.where(lower[:, None], np.stack([1 - np.cos(t), 0.5 - np.sin(t)], -1),
                 np.stack([np.cos(t), np.sin(t)], -1))
    x = (x - [0.5, 0.25]) * (4 / 3) + _MOON_NOISE * rng.standard_normal((n, 2))
  else:
    raise ValueError(f"unknown toy density {name!r}; known: {TOY_DENSITIES}")
  return x.astype(np.float32)


def toy2d_log_density(name: str, points: np.ndarray) -> np.ndarray:
  """Normalised log density of a toy distribution at points (..., 2); exact, closed form.

  rings: the radius is R_k + N(0, s^2) folded at 0 (a negative radius lands on the opposite
  side), so p(x) = sum_k w_k [phi_s(r - R_k) + phi_s(r + R_k)] / (2 pi r), r = |x|. It has an
  integrable spike of height ~1e-9 / r at the origin. two_moons raises NotImplementedError.
  """
  x = np.asarray(points, np.float64)
  if name == "8gaussians":
    angle = 2 * np.pi * np.arange(8) / 8
    centres = _GAUSS_RADIUS * np.stack([np.cos(angle), np.sin(angle)], -1)
    sq = np.sum((x[..., None, :] - centres) ** 2, -1)
    return (_logsumexp(-sq / (2 * _GAUSS_STD ** 2), -1) - np.log(8)
            - np.log(2 * np.pi * _GAUSS_STD ** 2))
  if name == "rings":
    r = np.linalg.norm(x, axis=-1)[..., None]
    log_w = np.log(_RING_RADII / _RING_RADII.sum())
    log_norm = np.log(_RING_STD * np.sqrt(2 * np.pi))
    terms = np.concatenate([log_w - 0.5 * ((r - _RING_RADII) / _RING_STD) ** 2,
                            log_w - 0.5 * ((r + _RING_RADII) / _RING_STD) ** 2], -1)
    with np.errstate(divide="ignore"):
      return _logsumexp(terms, -1) - log_norm - np.log(2 * np.pi * r[..., 0])
  if name == "checkerboard":
    inside = np.all(np.abs(x) <= 2, -1)
    cells = np.floor(x + 2).astype(np.int64)
    black = inside & ((cells[..., 0] + cells[..., 1]) % 2 == 0)
    return np.where(black, -np.log(8.0), -np.inf)
  if name == "two_moons":
    raise NotImplementedError("two_moons has no closed-form density")
  raise ValueError(f"unknown toy density {name!r}; known: {TOY_DENSITIES}")


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  top = np.max(a, axis=axis, keepdims=True)
  return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis)


def _toy_stream(cfg: settings_lib.DataSettings, batch_size: int, seed: int, start_step: int,
                process_index: int, process_count: int = 1) -> Iterator[Batch]:
  step = start_step
  rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
  while True:
    rng = np.random.default_rng([seed, step])
    points = sample_toy2d(cfg.toy_density, batch_size * process_count, rng)[rows]
    yield {"image": points, "label": np.zeros((batch_size, 0), np.float32)}
    step += 1
