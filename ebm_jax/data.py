"""Per-process input pipelines: infinite streams of local batches, reproducible from any step.

Every source yields `{"image": ..., "label": ...}` numpy batches of the *local* (per-process)
batch size:
  * `image`: uint8 (b, H, W, C) holding the stored integer levels (dequantisation happens on
    device, keyed by the step, so that a resumed run sees bit-identical inputs), or float32
    (b, 2) for the 2-D toy densities;
  * `label`: float32 one-hot (b, num_classes), (b, 0) when unconditional.

The batch at step s of process p depends only on (config, seed, s, p), never on where the
stream was started, so training resumes exactly after preemption:
  * offline image sources (digits, fashion_mnist, shapes): the global batch of step s (B = P·b
    examples) is positions [(s mod S)·B, (s mod S + 1)·B) of epoch s // S, the permutation
    `np.random.default_rng([seed, e])` of the whole split, S = N // B (the last partial batch
    of an epoch is dropped); process p takes rows [p·b, (p + 1)·b) of it. So the global batch
    does not depend on how many processes share it: P processes train on exactly what one
    process with the same global batch does. Starting at s costs one permutation, O(N).
  * toy2d: i.i.d. samples; the global batch of step s is drawn from
    `np.random.default_rng([seed, s])` and split the same way.
  * tensorflow-datasets: a deterministic tf.data pipeline over the process's even split
    (repeat -> seeded shuffle -> skip(s·b) -> decode -> batch); the skip runs over still-encoded
    records, so it is cheap compared with decoding.

Missing data raises `DataError`, whose message says what to install or download and where to
put it; the command line prints it without a traceback. TensorFlow and tensorflow-datasets are
imported only on the tfds code path, so the offline sources work without them.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import textwrap
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
  import ml_collections

Batch = dict[str, np.ndarray]


class DataError(Exception):
  """User-facing error: missing data etc.

  The message says exactly what to install/download and where to put it, or which config
  field to set. The CLI prints it without a traceback.
  """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about a data source.

  Attributes:
    name: `cfg.name`.
    shape: per-example shape: (H, W, C) for images, (2,) for toy2d.
    num_classes: width of the one-hot label; 0 when unconditional.
    levels: number of quantisation levels of the stored integers (256 for 8-bit images, 17
      for sklearn digits); 0 for float data (toy2d).
    num_examples: examples in the split owned by this process; -1 if unknown.
    class_names: names of the label values; class-labelled sets report their classes even
      when unconditional.
  """
  name: str
  shape: tuple[int, ...]
  num_classes: int
  levels: int
  num_examples: int
  class_names: tuple[str, ...]


OFFLINE_DATASETS = ("digits", "fashion_mnist", "shapes", "toy2d")
# data.name -> tensorflow-datasets name.
TFDS_NAMES = {
    "cifar10": "cifar10",
    "mnist": "mnist",
    "celeba_hq": "celeb_a_hq/128",
    "lsun_bedroom": "lsun/bedroom",
    "celeba": "celeb_a",
}
DATASETS = OFFLINE_DATASETS + tuple(TFDS_NAMES)

# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_PREFIX = {"train": "train", "test": "t10k"}

# sklearn's digits ship without a split; hold out the last 297 of 1797 for evaluation.
_DIGITS_TRAIN = 1500
_DIGITS_LEVELS = 17  # pixel values 0..16

# ITU-R BT.601 luma, used for every RGB -> grey conversion.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

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

# ---------------------------------------------------------------- 2-D toy densities
TOY_DENSITIES = ("8gaussians", "rings", "checkerboard", "two_moons")
_GAUSS_RADIUS, _GAUSS_STD = 2.0, 0.1  # 8 modes at distance 1.53 from each other, 15 std
_RING_RADII = np.array([0.5, 1.0, 1.5, 2.0])
_RING_STD = 0.08
_MOON_NOISE = 0.1


# =================================================================== public entry points


def get_info(cfg: ml_collections.ConfigDict, *, process_index: int = 0,
             process_count: int = 1) -> DatasetInfo:
  """Describes the data `cfg` (the `config.data` block) selects.

  Cheap for offline sources. For tfds it reads the dataset's metadata, and when the data is
  absent it downloads it if `cfg.download`, else raises.

  Args:
    cfg: the `data` config block.
    process_index: this process, for the local `num_examples`.
    process_count: number of processes reading disjoint shards.

  Returns:
    The `DatasetInfo`.

  Raises:
    DataError: unknown dataset / split / attribute, invalid image settings, or missing data.
  """
  _check_config(cfg)
  _check_process(process_index, process_count)
  if cfg.name == "toy2d":
    return DatasetInfo("toy2d", (2,), 0, 0, -1, ())
  if cfg.name in TFDS_NAMES:
    return _tfds_open(cfg, cfg.split, process_index, process_count)[1]
  levels, attributes = _offline_meta(cfg.name)
  key, class_names = _select_attribute(cfg.name, cfg.attribute, attributes)
  total = _offline_size(cfg, cfg.split)
  return DatasetInfo(
      name=cfg.name, shape=(cfg.image_size, cfg.image_size, cfg.channels),
      num_classes=len(class_names) if key else 0, levels=levels,
      num_examples=len(range(process_index, total, process_count)), class_names=class_names)


def make_stream(cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int = 0,
                process_count: int = 1) -> Iterator[Batch]:
  """Returns this process's infinite stream of local batches, starting at `start_step`.

  The n-th batch yielded is the batch of step `start_step + n`, a deterministic function of
  (cfg, seed, step, process_index, process_count). Configuration and availability errors are
  raised here, not at the first `next()`.

  Args:
    cfg: the `data` config block.
    batch_size: the local (per-process) batch size b.
    seed: non-negative data seed.
    start_step: the step of the first batch.
    process_index: this process in [0, process_count).
    process_count: number of processes reading disjoint shards.

  Returns:
    An iterator of {"image", "label"} numpy dicts (see the module docstring).

  Raises:
    DataError: see `get_info`; also a batch larger than the local shard.
  """
  _check_config(cfg)
  _check_process(process_index, process_count)
  if batch_size < 1 or start_step < 0 or seed < 0:
    raise ValueError(f"need batch_size >= 1, start_step >= 0, seed >= 0; got {batch_size}, "
                     f"{start_step}, {seed}")
  if cfg.name == "toy2d":
    return _toy_stream(cfg, batch_size, seed, start_step, process_index, process_count)
  if cfg.name in TFDS_NAMES:
    source, _ = _tfds_open(cfg, cfg.split, process_index, process_count)
    ds = _tfds_pipeline(source, cfg, batch_size=batch_size, seed=seed, skip=start_step *
                        batch_size, repeat=True, drop_remainder=True)
    return _tfds_iterate(ds)
  arrays = _offline_arrays(cfg, cfg.split)
  key, _ = _select_attribute(cfg.name, cfg.attribute, arrays.attributes)
  total = arrays.images.shape[0]
  if batch_size * process_count > total:
    raise DataError(
        f"the global batch of {batch_size * process_count} ({process_count} process(es) x "
        f"{batch_size}) exceeds the {total} examples of {cfg.name}/{cfg.split}; lower "
        "--config.train.batch_size")
  return _array_stream(cfg, arrays, key, batch_size, seed, start_step, process_index,
                       process_count)


def load_arrays(cfg: ml_collections.ConfigDict, n: int, *, split: str | None = None,
                seed: int = 0) -> Batch:
  """Returns the first n examples of a seeded shuffle of a whole split as one batch dict.

  Same format as `make_stream` batches. Offline image sources return at most the split's
  size; for them (and toy2d) the result equals the first batch of
  `make_stream(cfg, batch_size=n, seed=seed)` with one process when n fits.

  Args:
    cfg: the `data` config block.
    n: number of examples.
    split: overrides `cfg.split` (e.g. "test" for evaluation).
    seed: shuffle seed.
  """
  _check_config(cfg)
  split = cfg.split if split is None else split
  if cfg.name == "toy2d":
    return next(_toy_stream(cfg, n, seed, 0, 0))
  if cfg.name in TFDS_NAMES:
    source, _ = _tfds_open(cfg, split, 0, 1)
    ds = _tfds_pipeline(source, cfg, batch_size=n, seed=seed, skip=0, repeat=False,
                        drop_remainder=False, take=n)
    return next(_tfds_iterate(ds))
  arrays = _offline_arrays(cfg, split)
  key, _ = _select_attribute(cfg.name, cfg.attribute, arrays.attributes)
  total = arrays.images.shape[0]
  order = np.random.default_rng([seed, 0]).permutation(total)[:n]
  return _array_batch(cfg, arrays, key, order)


# =================================================================== validation


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  if cfg.name not in DATASETS:
    raise DataError(f"data.name={cfg.name!r} is not one of {DATASETS}; set --config.data.name")
  if cfg.name == "toy2d":
    if cfg.toy_density not in TOY_DENSITIES:
      raise DataError(f"data.toy_density={cfg.toy_density!r} is not one of {TOY_DENSITIES}")
    if cfg.attribute:
      raise DataError("toy2d is unconditional: set --config.data.attribute=''")
    return
  if cfg.channels not in (1, 3):
    raise DataError(f"data.channels={cfg.channels} must be 1 (grey) or 3 (RGB)")
  if cfg.image_size < 1:
    raise DataError(f"data.image_size={cfg.image_size} must be positive")


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")


def _select_attribute(name: str, attribute: str, attributes: Mapping[str, tuple[str, ...]]
                      ) -> tuple[str | None, tuple[str, ...]]:
  """Returns (label key or None when unconditional, class names)."""
  if attribute == "":
    # Unconditional; class-labelled sets still report their class names.
    return None, attributes.get("class", ())
  if attribute not in attributes:
    valid = ", ".join(repr(a) for a in ("",) + tuple(attributes))
    raise DataError(f"data.attribute={attribute!r} is not valid for {name}; valid: {valid} "
                    "('' = unconditional). Set --config.data.attribute")
  return attribute, attributes[attribute]


# =================================================================== image helpers (numpy)


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) triangle-filter weights, widened when shrinking (antialiased bilinear)."""
  scale = n_out / n_in
  support = max(1.0, 1.0 / scale)
  centres = (np.arange(n_out) + 0.5) / scale - 0.5  # half-pixel centres, as tf.image.resize
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support)
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_images(images: np.ndarray, size: int, max_value: int = 255) -> np.ndarray:
  """Centre-crops uint8 NHWC images to a square and resizes them to size x size (bilinear).

  Results are rounded to integers in [0, max_value], so the number of levels is kept.
  """
  n, h, w, c = images.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  images = images[:, top:top + side, left:left + side]
  if side == size:
    return images
  wts = _resize_weights(side, size)
  x = np.einsum("ih,nhwc->niwc", wts, images.astype(np.float32))
  x = np.einsum("jw,niwc->nijc", wts, x)
  return np.clip(np.rint(x), 0, max_value).astype(np.uint8)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 NHWC: RGB -> grey by rounded BT.601 luma, grey -> RGB by repetition."""
  c = images.shape[-1]
  if c == channels:
    return images
  if c == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if c == 3 and channels == 1:
    return np.rint(images.astype(np.float32) @ _LUMA)[..., None].astype(np.uint8)
  raise ValueError(f"cannot convert {c} channels to {channels}")


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[labels]


# =================================================================== offline image sources


@dataclasses.dataclass(frozen=True)
class _Arrays:
  images: np.ndarray  # (N, H, W, C) uint8 at the native resolution
  labels: Mapping[str, np.ndarray]  # attribute -> (N,) int class index
  attributes: Mapping[str, tuple[str, ...]]  # attribute -> names of its values
  levels: int


def _offline_meta(name: str) -> tuple[int, Mapping[str, tuple[str, ...]]]:
  """(levels, attribute -> value names) of an offline image source, without loading it."""
  if name == "digits":
    return _DIGITS_LEVELS, {"class": tuple(str(d) for d in range(10))}
  if name == "fashion_mnist":
    return 256, {"class": FASHION_MNIST_CLASSES}
  return 256, SHAPE_ATTRIBUTES


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
  if split not in valid:
    raise DataError(f"data.split={split!r} is not a split of {name}; valid: {valid}")


def _offline_size(cfg: ml_collections.ConfigDict, split: str) -> int:
  if cfg.name == "shapes":
    _check_split("shapes", split, tuple(_SHAPES_SIZE))
    return _SHAPES_SIZE[split]
  if cfg.name == "fashion_mnist":
    _check_split("fashion_mnist", split, tuple(_FASHION_PREFIX))
    images_file, _ = _fashion_files(cfg.path, split)
    with gzip.open(images_file, "rb") as f:  # the IDX header holds the count
      return int(np.frombuffer(f.read(8), ">u4")[1])
  return _offline_arrays(cfg, split).images.shape[0]


def _offline_arrays(cfg: ml_collections.ConfigDict, split: str) -> _Arrays:
  if cfg.name == "digits":
    _check_split("digits", split, ("train", "test"))
    return _digits_arrays(split)
  if cfg.name == "fashion_mnist":
    _check_split("fashion_mnist", split, tuple(_FASHION_PREFIX))
    return _fashion_arrays(*_fashion_files(cfg.path, split))
  _check_split("shapes", split, tuple(_SHAPES_SIZE))
  # Rendered at the target size: sharper than resizing a fixed rendering.
  return _shapes_arrays(split, cfg.image_size)


@functools.lru_cache(maxsize=2)
def _digits_arrays(split: str) -> _Arrays:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (slow import, one source)
  digits = datasets.load_digits()
  part = slice(None, _DIGITS_TRAIN) if split == "train" else slice(_DIGITS_TRAIN, None)
  images = digits.images[part].astype(np.uint8)[..., None]
  return _Arrays(images, {"class": digits.target[part].astype(np.int64)},
                 _offline_meta("digits")[1], _DIGITS_LEVELS)


def _fashion_files(path: str, split: str) -> tuple[str, str]:
  folder = path or FASHION_MNIST_DIR
  prefix = _FASHION_PREFIX[split]
  files = (os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"),
           os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise DataError(
        f"Fashion-MNIST file(s) not found: {', '.join(missing)}. Install them with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; they go to "
        f"{FASHION_MNIST_DIR}), or download the four *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist into a folder and pass "
        "--config.data.path=/folder/with/the/idx/files")
  return files


def _read_idx(filename: str, ndim: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes (magic 0x0000 08 ndim, big-endian dims)."""
  with gzip.open(filename, "rb") as f:
    data = f.read()
  magic = int.from_bytes(data[:4], "big")
  if magic != 0x800 + ndim:
    raise DataError(f"{filename} is not an IDX file of {ndim}-D uint8 data (magic {magic:#x}); "
                    "re-download it")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=2)
def _fashion_arrays(images_file: str, labels_file: str) -> _Arrays:
  images = _read_idx(images_file, 3)[..., None]
  labels = _read_idx(labels_file, 1).astype(np.int64)
  if labels.shape[0] != images.shape[0]:
    raise DataError(f"{images_file} and {labels_file} hold different numbers of examples")
  return _Arrays(images, {"class": labels}, _offline_meta("fashion_mnist")[1], 256)


def _array_batch(cfg: ml_collections.ConfigDict, arrays: _Arrays, key: str | None,
                 idx: np.ndarray) -> Batch:
  images = resize_images(arrays.images[idx], cfg.image_size, arrays.levels - 1)
  images = convert_channels(images, cfg.channels)
  if key is None:
    labels = np.zeros((idx.size, 0), np.float32)
  else:
    labels = _one_hot(arrays.labels[key][idx], len(arrays.attributes[key]))
  return {"image": images, "label": labels}


def _array_stream(cfg: ml_collections.ConfigDict, arrays: _Arrays, key: str | None,
                  batch_size: int, seed: int, start_step: int, process_index: int,
                  process_count: int) -> Iterator[Batch]:
  total = arrays.images.shape[0]
  global_batch = batch_size * process_count
  steps_per_epoch = total // global_batch
  step, epoch, order = start_step, -1, None
  while True:
    e, k = divmod(step, steps_per_epoch)
    if e != epoch:
      # A fresh generator per epoch: the permutation depends only on (seed, epoch).
      epoch = e
      order = np.random.default_rng([seed, epoch]).permutation(total)
    first = k * global_batch + process_index * batch_size
    yield _array_batch(cfg, arrays, key, order[first:first + batch_size])
    step += 1


# =================================================================== procedural shapes


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


# =================================================================== 2-D toy densities


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


def _toy_stream(cfg: ml_collections.ConfigDict, batch_size: int, seed: int, start_step: int,
                process_index: int, process_count: int = 1) -> Iterator[Batch]:
  step = start_step
  rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
  while True:
    rng = np.random.default_rng([seed, step])
    points = sample_toy2d(cfg.toy_density, batch_size * process_count, rng)[rows]
    yield {"image": points, "label": np.zeros((batch_size, 0), np.float32)}
    step += 1


# =================================================================== tensorflow-datasets


def _import_tfds() -> tuple[Any, Any]:
  """Imports TensorFlow and tensorflow-datasets on first use (only tfds sources need them)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"this dataset needs TensorFlow and tensorflow-datasets ({e}); "
                    "`pip install tensorflow-cpu tensorflow-datasets`") from e
  try:
    # tf.data only needs the CPU; keep TensorFlow off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices
    pass
  return tf, tfds


@dataclasses.dataclass(frozen=True)
class _TfdsSource:
  builder: Any  # tfds.core.DatasetBuilder
  split: Any  # the process's even sub-split
  native_channels: int
  static_hw: tuple[int, int] | None  # None: images of varying sizes (lsun)
  label_key: str | None  # "label", a CelebA attribute, or None (unconditional)
  num_classes: int


def _tfds_open(cfg: ml_collections.ConfigDict, split: str, process_index: int,
               process_count: int) -> tuple[_TfdsSource, DatasetInfo]:
  """Builds the tfds builder, checks the attribute and that the data is there (or gets it)."""
  _, tfds = _import_tfds()
  tfds_name = TFDS_NAMES[cfg.name]
  builder = tfds.builder(tfds_name, data_dir=cfg.path or None)
  features = builder.info.features
  if cfg.name == "celeba":
    attributes = {a: (f"not {a}", a) for a in features["attributes"].keys()}
  elif "label" in features:
    attributes = {"class": tuple(features["label"].names)}
  else:
    attributes = {}
  key, class_names = _select_attribute(cfg.name, cfg.attribute, attributes)
  sub_split = tfds.split_for_jax_process(split, process_index=process_index,
                                         process_count=process_count)
  _tfds_ensure_data(tfds, builder, cfg, sub_split)
  try:
    num_examples = int(builder.info.splits[sub_split].num_examples)
  except (KeyError, ValueError):  # no split metadata (e.g. under tfds.testing.mock_data)
    num_examples = -1
  image_shape = features["image"].shape
  static_hw = None if None in image_shape[:2] else tuple(image_shape[:2])
  source = _TfdsSource(builder, sub_split, image_shape[2], static_hw,
                       None if key is None else ("label" if key == "class" else key),
                       len(class_names) if key else 0)
  info = DatasetInfo(cfg.name, (cfg.image_size, cfg.image_size, cfg.channels),
                     source.num_classes, 256, num_examples, class_names)
  return source, info


def _tfds_ensure_data(tfds: Any, builder: Any, cfg: ml_collections.ConfigDict,
                      split: Any) -> None:
  """Raises DataError unless the split can be read, downloading first if cfg.download."""
  try:
    # Building the (lazy) dataset is the check tfds itself makes; it reads no examples. It
    # also passes under tfds.testing.mock_data, which no file-system check would.
    builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return
  except Exception as e:  # pylint: disable=broad-except  (every failure becomes a DataError)
    if builder.is_prepared():
      raise DataError(
          f"cannot read split {cfg.split!r} of {builder.name} in {builder.data_dir}: "
          f"{_first_line(e)}. Known splits: {list(builder.info.splits)}; set "
          "--config.data.split") from e
  tfds_name = TFDS_NAMES[cfg.name]
  data_dir = str(builder.data_dir_root)
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  manual_dir = os.path.join(data_dir, "downloads", "manual")
  if manual:
    how = (f"{tfds_name} must be downloaded by hand. tensorflow-datasets says:\n"
           f"{textwrap.indent(textwrap.dedent(manual).strip(), '  ')}\n"
           f"Put those files into {manual_dir}, then run `tfds build {tfds_name} "
           f"--data_dir={data_dir} --manual_dir={manual_dir}` (or rerun with "
           "--config.data.download=True, which prepares it from that manual_dir).")
  else:
    how = (f"Either let this run download and prepare it with --config.data.download=True, "
           f"or run `tfds build {tfds_name} --data_dir={data_dir}` on a machine with internet "
           f"and copy the folder {tfds_name.split('/')[0]}/ it writes into {data_dir}, or point "
           "--config.data.path at a tfds data_dir that already holds it.")
  missing = f"dataset {tfds_name!r} (data.name={cfg.name!r}) was not found in data_dir {data_dir}."
  if not cfg.download:
    raise DataError(f"{missing} Downloading is off (data.download=False). {how}")
  if manual and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
    raise DataError(f"{missing} {how}")
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  (no internet, missing module, ...)
    # tfds 4.9.10 imports `importlib_resources` when preparing but declares it only for old
    # Pythons, so name the missing module.
    fix = f" (`pip install {e.name}`)" if isinstance(e, ModuleNotFoundError) and e.name else ""
    raise DataError(f"{missing} Downloading it failed ({type(e).__name__}: {_first_line(e)}"
                    f"{fix}). {how}") from e


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _tfds_pipeline(source: _TfdsSource, cfg: ml_collections.ConfigDict, *, batch_size: int,
                   seed: int, skip: int, repeat: bool, drop_remainder: bool,
                   take: int | None = None) -> Any:
  """The deterministic tf.data pipeline: [repeat] -> shuffle -> skip -> decode -> batch."""
  tf, tfds = _import_tfds()
  ds = source.builder.as_dataset(split=source.split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
  label_key, num_classes = source.label_key, source.num_classes

  def select(ex):
    # Keep only the encoded image and the class index, so the shuffle buffer stays small.
    if label_key is None:
      label = tf.constant(0, tf.int32)
    elif label_key == "label":
      label = tf.cast(ex["label"], tf.int32)
    else:
      label = tf.cast(ex["attributes"][label_key], tf.int32)
    return ex["image"], label

  def decode(image, label):
    image = _tf_image(tf, image, source, cfg.image_size, cfg.channels)
    return {"image": image, "label": tf.one_hot(label, num_classes, dtype=tf.float32)}

  ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
  if repeat:
    ds = ds.repeat()  # before the shuffle, so epochs blend and no epoch ends in a short batch
  if cfg.shuffle_buffer > 1:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed)
  if take is not None:
    ds = ds.take(take)
  ds = ds.skip(skip)
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True  # parallel maps keep the input order
  return ds.with_options(options)


def _tf_image(tf: Any, encoded: Any, source: _TfdsSource, size: int, channels: int) -> Any:
  """Decodes, centre-crops to a square, resizes (antialiased bilinear), converts channels.

  Cropping the centre square and resizing it equals resizing the shorter side to `size` and
  cropping the centre (lsun), up to the filter taps at the crop border.
  """
  image = tf.io.decode_image(encoded, channels=source.native_channels, expand_animations=False)
  if source.static_hw is not None:
    image.set_shape(source.static_hw + (source.native_channels,))
    h, w = source.static_hw
  else:
    image.set_shape((None, None, source.native_channels))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(h, w) if source.static_hw is None else min(h, w)
  image = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
  if source.static_hw is None or side != size:
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear",
                            antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  if source.native_channels == 3 and channels == 1:
    luma = tf.tensordot(tf.cast(image, tf.float32), tf.constant(_LUMA), axes=1)
    image = tf.cast(tf.round(luma), tf.uint8)[..., None]
  elif source.native_channels == 1 and channels == 3:
    image = tf.tile(image, (1, 1, 3))
  image.set_shape((size, size, channels))
  return image


def _tfds_iterate(ds: Any) -> Iterator[Batch]:
  _, tfds = _import_tfds()
  for batch in tfds.as_numpy(ds):
    yield {"image": batch["image"], "label": batch["label"]}
