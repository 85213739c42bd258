"""Offline image arrays as reproducible streams, and numpy image helpers (antialiased resize,
grey <-> RGB)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
  from ebm_jax import settings as settings_lib

Batch = dict[str, np.ndarray]


# ITU-R BT.601 luma, used for every RGB -> grey conversion.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


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




@dataclasses.dataclass(frozen=True)
class _Arrays:
  images: np.ndarray  # (N, H, W, C) uint8 at the native resolution
  labels: Mapping[str, np.ndarray]  # attribute -> (N,) int class index
  attributes: Mapping[str, tuple[str, ...]]  # attribute -> names of its values
  levels: int


def _array_batch(cfg: settings_lib.DataSettings, arrays: _Arrays, key: str | None,
                 idx: np.ndarray) -> Batch:
  images = resize_images(arrays.images[idx], cfg.image_size, arrays.levels - 1)
  images = convert_channels(images, cfg.channels)
  if key is None:
    labels = np.zeros((idx.size, 0), np.float32)
  else:
    labels = _one_hot(arrays.labels[key][idx], len(arrays.attributes[key]))
  return {"image": images, "label": labels}


def _array_stream(cfg: settings_lib.DataSettings, arrays: _Arrays, key: str | None,
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
