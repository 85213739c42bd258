"""What evaluation reads of a dataset besides its batches: the dequantisation of stored levels
to [0, 1] (`to_unit`), the held-out split of each dataset (`test_split`), and a fresh data
typed data section from a ConfigDict's or a settings.DataSettings (`as_settings`). `data.test_images` / `data.split_images` (ebm_jax/data/__init__.py) build on
them."""

from __future__ import annotations

import dataclasses

import numpy as np

from ebm_jax import settings as settings_lib
from ebm_jax.data.base import OFFLINE_DATASETS

# The split that stands for "test" in tfds datasets without one.
_TFDS_TEST_SPLITS = {"celeba_hq": "train[-3000:]", "lsun_bedroom": "validation"}


def as_settings(data, **changes) -> settings_lib.DataSettings:
  """The data section as a typed value (from a DataSettings, or a ConfigDict's or dict's
  section), with `changes` applied: a new value, the argument left as it was."""
  if not isinstance(data, settings_lib.DataSettings):
    data = settings_lib.build(settings_lib.DataSettings, data, "data")
  return dataclasses.replace(data, **changes)


def to_unit(images: np.ndarray, levels: int) -> np.ndarray:
  """Stored integer levels -> [0, 1] at the centre of each level's dequantisation interval
  (levels 0: the values are already real numbers and pass unchanged)."""
  if levels == 0:
    return np.asarray(images, np.float32)
  return (np.asarray(images, np.float32) + 0.5) / levels


def test_split(name: str) -> str:
  """The held-out split of a dataset: `test`, or its stand-in for tfds sets without one."""
  return "test" if name in OFFLINE_DATASETS else _TFDS_TEST_SPLITS.get(name, "test")
