"""What every data source shares: the batch format, DatasetInfo, the dataset names, and
the checks of a data config (see ebm_jax/data/__init__.py for the stream semantics)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ebm_jax.errors import DataError
from ebm_jax.data.toy2d import TOY_DENSITIES, load_points

if TYPE_CHECKING:
  from ebm_jax import settings as settings_lib


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


OFFLINE_DATASETS = ("digits", "fashion_mnist", "shapes", "toy2d", "points")
POINT_DATASETS = ("toy2d", "points")  # 2-D float data: the mlp energy, float32 buffer
# data.name -> tensorflow-datasets name.
TFDS_NAMES = {
    "cifar10": "cifar10",
    "mnist": "mnist",
    "celeba_hq": "celeb_a_hq/128",
    "lsun_bedroom": "lsun/bedroom",
    "celeba": "celeb_a",
}
DATASETS = OFFLINE_DATASETS + tuple(TFDS_NAMES)
IDX_DATASETS = ("fashion_mnist", "mnist")  # read from gzipped IDX files (mnist: with data.path)


def from_tfds(cfg: settings_lib.DataSettings) -> bool:
  """Whether cfg's data comes through tfds: the tfds sets, except mnist when data.path is a
  folder of its IDX files (then read as Fashion-MNIST's are; any other data.path is tfds's
  data_dir)."""
  if cfg.name == "mnist" and cfg.path:
    return not os.path.isfile(os.path.join(cfg.path, "train-images-idx3-ubyte.gz"))
  return cfg.name in TFDS_NAMES


# =================================================================== validation


def _check_config(cfg: settings_lib.DataSettings) -> None:
  if cfg.name not in DATASETS:
    raise DataError(f"data.name={cfg.name!r} is not one of {DATASETS}; set --config.data.name")
  if cfg.name == "toy2d":
    if cfg.toy_density not in TOY_DENSITIES:
      raise DataError(f"data.toy_density={cfg.toy_density!r} is not one of {TOY_DENSITIES}")
    if cfg.attribute:
      raise DataError("toy2d is unconditional: set --config.data.attribute=''")
    return
  if cfg.name == "points":
    if cfg.attribute:
      raise DataError("points are unconditional: set --config.data.attribute=''")
    load_points(cfg.path)
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
