"""The offline image sources on disk or in a wheel: scikit-learn's digits, and the gzipped IDX
files of Fashion-MNIST (Debian's dataset-fashion-mnist, or any folder given as data.path) and of
MNIST (a folder given as data.path; without one MNIST comes through tfds)."""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ebm_jax.errors import DataError
from ebm_jax.data.base import IDX_DATASETS
from ebm_jax.data.images import _Arrays
from ebm_jax.data.shapes import SHAPE_ATTRIBUTES, _SHAPES_SIZE, _shapes_arrays

if TYPE_CHECKING:
  from ebm_jax import settings as settings_lib


# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_PREFIX = {"train": "train", "test": "t10k"}

# sklearn's digits ship without a split; hold out the last 297 of 1797 for evaluation.
_DIGITS_TRAIN = 1500
_DIGITS_LEVELS = 17  # pixel values 0..16


def _offline_meta(name: str) -> tuple[int, Mapping[str, tuple[str, ...]]]:
  """(levels, attribute -> value names) of an offline image source, without loading it."""
  if name == "digits":
    return _DIGITS_LEVELS, {"class": tuple(str(d) for d in range(10))}
  if name == "fashion_mnist":
    return 256, {"class": FASHION_MNIST_CLASSES}
  if name == "mnist":
    return 256, {"class": tuple(str(d) for d in range(10))}
  return 256, SHAPE_ATTRIBUTES


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
  if split not in valid:
    raise DataError(f"data.split={split!r} is not a split of {name}; valid: {valid}")


def _offline_size(cfg: settings_lib.DataSettings, split: str) -> int:
  if cfg.name == "shapes":
    _check_split("shapes", split, tuple(_SHAPES_SIZE))
    return _SHAPES_SIZE[split]
  if cfg.name in IDX_DATASETS:
    _check_split(cfg.name, split, tuple(_IDX_PREFIX))
    images_file, _ = _idx_files(cfg.name, cfg.path, split)
    with gzip.open(images_file, "rb") as f:  # the IDX header holds the count
      return int(np.frombuffer(f.read(8), ">u4")[1])
  return _offline_arrays(cfg, split).images.shape[0]


def _offline_arrays(cfg: settings_lib.DataSettings, split: str) -> _Arrays:
  if cfg.name == "digits":
    _check_split("digits", split, ("train", "test"))
    return _digits_arrays(split)
  if cfg.name in IDX_DATASETS:
    _check_split(cfg.name, split, tuple(_IDX_PREFIX))
    return _idx_arrays(cfg.name, *_idx_files(cfg.name, cfg.path, split))
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


def _idx_files(name: str, path: str, split: str) -> tuple[str, str]:
  folder = path or FASHION_MNIST_DIR
  prefix = _IDX_PREFIX[split]
  files = (os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"),
           os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
  missing = [f for f in files if not os.path.isfile(f)]
  if missing and name == "mnist":
    raise DataError(f"MNIST file(s) not found: {', '.join(missing)}. data.path must be a folder "
                    "with the four gzipped IDX files (train-images-idx3-ubyte.gz, ...); without "
                    "a data.path MNIST comes through tfds")
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
def _idx_arrays(name: str, images_file: str, labels_file: str) -> _Arrays:
  images = _read_idx(images_file, 3)[..., None]
  labels = _read_idx(labels_file, 1).astype(np.int64)
  if labels.shape[0] != images.shape[0]:
    raise DataError(f"{images_file} and {labels_file} hold different numbers of examples")
  if images.shape[1:3] != (28, 28):
    raise DataError(f"{images_file}: images of {images.shape[1]}x{images.shape[2]}, not the "
                    f"28x28 of {name}")
  return _Arrays(images, {"class": labels}, _offline_meta(name)[1], 256)
