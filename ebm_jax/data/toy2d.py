"""2-D data: the toy densities (samplers and exact log-densities, for comparing a learned
density with the truth) and a user's own points (data.name=points, data.path=FILE.npz holding
one (N, 2) array: a seeded tenth of the rows is the held-out 'test' split, the rest 'train')."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ebm_jax.errors import DataError

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
  integrable spike of height ~1e-9 / r at the origin. two_moons: a point c(t) of either moon's
  half circle, t ~ U(0, π), plus N(0, s²I), so p(x) = ½ Σ_moons (1/π) ∫₀^π φ_s(x − c(t)) dt, by
  the midpoint rule over MOON_NODES values of t (the nodes lie 0.002 apart on the curve, 1/50
  of s: exact to float64 rounding).
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
    return _two_moons_log_density(x)
  raise ValueError(f"unknown toy density {name!r}; known: {TOY_DENSITIES}")


MOON_NODES = 2000


def _moon_curve(t: np.ndarray) -> np.ndarray:
  """(2·len(t), 2): both moons' noiseless points at parameters t, as sample_toy2d maps them."""
  upper = np.stack([np.cos(t), np.sin(t)], -1)
  lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], -1)
  return (np.concatenate([upper, lower]) - [0.5, 0.25]) * (4 / 3)


def _two_moons_log_density(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
  t = (np.arange(MOON_NODES) + 0.5) * np.pi / MOON_NODES
  curve = _moon_curve(t)  # every node carries weight ½ · 1/MOON_NODES
  flat = x.reshape(-1, 2)
  out = np.empty(len(flat))
  log_c = -np.log(2 * MOON_NODES) - np.log(2 * np.pi * _MOON_NOISE ** 2)
  c2 = np.sum(curve ** 2, -1)
  for i in range(0, len(flat), chunk):
    p = flat[i:i + chunk]
    sq = np.maximum(np.sum(p ** 2, -1)[:, None] - 2 * p @ curve.T + c2, 0.0)
    out[i:i + chunk] = _logsumexp(-sq / (2 * _MOON_NOISE ** 2), -1) + log_c
  return out.reshape(x.shape[:-1])


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  top = np.max(a, axis=axis, keepdims=True)
  return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis)


def _iid_stream(draw: Callable[[int, np.random.Generator], np.ndarray], batch_size: int,
                seed: int, start_step: int, process_index: int,
                process_count: int) -> Iterator[Batch]:
  """Global batches of i.i.d. 2-D points, `draw(n, default_rng([seed, step]))`, split by rows
  over the processes: the batch of step s depends on (seed, s) only."""
  step = start_step
  rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
  while True:
    points = draw(batch_size * process_count, np.random.default_rng([seed, step]))[rows]
    yield {"image": points, "label": np.zeros((batch_size, 0), np.float32)}
    step += 1


def _toy_stream(cfg: settings_lib.DataSettings, batch_size: int, seed: int, start_step: int,
                process_index: int, process_count: int = 1) -> Iterator[Batch]:
  return _iid_stream(lambda n, rng: sample_toy2d(cfg.toy_density, n, rng), batch_size, seed,
                     start_step, process_index, process_count)


# ---------------------------------------------------------------- a user's own points
POINTS_TEST_FRACTION = 0.1
_POINTS_CACHE: dict[tuple, np.ndarray] = {}  # (path, mtime, size) -> the checked points


def load_points(path: str) -> np.ndarray:
  """All rows of FILE.npz's single (N, 2) array (or its 'points' array), float32, checked."""
  if not path or not os.path.isfile(path):
    raise DataError(f"data.name=points reads data.path=FILE.npz; {path!r} is not a file")
  stat = os.stat(path)
  key_of_file = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
  if key_of_file in _POINTS_CACHE:
    return _POINTS_CACHE[key_of_file]
  try:
    with np.load(path) as f:
      names = list(f.keys())
      key = "points" if "points" in names else (names[0] if len(names) == 1 else None)
      if key is None:
        raise DataError(f"{path}: holds arrays {names}; give one array, or name it 'points'")
      x = np.asarray(f[key])
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: not a readable .npz file ({e})") from e
  if x.ndim != 2 or x.shape[1] != 2 or not np.issubdtype(x.dtype, np.number):
    raise DataError(f"{path}: '{key}' is {x.dtype} of shape {x.shape}; points are a numeric "
                    "(N, 2) array")
  if len(x) < 20:
    raise DataError(f"{path}: {len(x)} points; at least 20 are needed (a tenth is held out)")
  if not np.all(np.isfinite(x)):
    raise DataError(f"{path}: {int(np.sum(~np.all(np.isfinite(x), 1)))} rows are not finite")
  _POINTS_CACHE[key_of_file] = x.astype(np.float32)
  return _POINTS_CACHE[key_of_file]


def points_split(path: str, split: str) -> np.ndarray:
  """The 'train' or 'test' rows (a fixed seeded permutation: the split never depends on the
  run's seed)."""
  x = load_points(path)
  order = np.random.default_rng(20211).permutation(len(x))
  n_test = max(int(round(POINTS_TEST_FRACTION * len(x))), 2)
  if split == "test":
    return x[order[:n_test]]
  if split == "train":
    return x[order[n_test:]]
  raise DataError(f"data.split={split!r}: points have the splits 'train' and 'test'")


def check_points_box(path: str, box: tuple[float, float]) -> None:
  """Every point inside the square box² on which the density is fitted and normalised."""
  x = load_points(path)
  outside = int(np.sum(np.any((x < box[0]) | (x > box[1]), axis=1)))
  if outside:
    lo, hi = float(x.min()), float(x.max())
    pad = 0.1 * (hi - lo)
    raise DataError(f"{outside} of {len(x)} points lie outside buffer.noise_range {tuple(box)}, "
                    "the square the density lives on; set --config.buffer.noise_range="
                    f"'({lo - pad:.3g}, {hi + pad:.3g})' (the points' range with a 10 % margin)")


def _points_stream(cfg: settings_lib.DataSettings, batch_size: int, seed: int, start_step: int,
                   process_index: int, process_count: int = 1) -> Iterator[Batch]:
  x = points_split(cfg.path, "train")  # rows drawn with replacement
  return _iid_stream(lambda n, rng: x[rng.integers(len(x), size=n)], batch_size, seed,
                     start_step, process_index, process_count)
