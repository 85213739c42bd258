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
  * points (a user's (N, 2) array in data.path=FILE.npz): rows of the train split drawn with
    replacement by `np.random.default_rng([seed, s])`, split the same way.
  * tensorflow-datasets: a deterministic tf.data pipeline over the process's even split
    (repeat -> seeded shuffle -> skip(s·b) -> decode -> batch); the skip runs over still-encoded
    records, so it is cheap compared with decoding.

Missing data raises `DataError`, whose message says what to install or download and where to
put it; the command line prints it without a traceback. TensorFlow and tensorflow-datasets are
imported only on the tfds code path, so the offline sources work without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ebm_jax.errors import DataError

if TYPE_CHECKING:
  from ebm_jax import settings as settings_lib

Batch = dict[str, np.ndarray]

# The public names of ebm_jax.data; each source lives in a module of its own.
__all__ = ["DATASETS", "OFFLINE_DATASETS", "POINT_DATASETS", "TFDS_NAMES", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_DIR", "SHAPE_ATTRIBUTES", "SHAPES", "SHAPE_COLORS", "SIZES", "POSITIONS",
           "TOY_DENSITIES", "Batch",
           "DataError", "DatasetInfo", "convert_channels", "get_info", "load_arrays",
           "from_tfds", "make_stream", "render_shape", "resize_images", "sample_toy2d",
           "toy2d_log_density"]

from ebm_jax.data.base import (DATASETS, OFFLINE_DATASETS, POINT_DATASETS, TFDS_NAMES,
                               DatasetInfo, from_tfds,
                               _check_config, _check_process, _select_attribute)
from ebm_jax.data.held_out import as_settings, test_split, to_unit
from ebm_jax.data.images import _array_batch, _array_stream, convert_channels, resize_images
from ebm_jax.data.offline import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, _offline_arrays,
                                  _offline_meta, _offline_size)
from ebm_jax.data.shapes import (POSITIONS, SHAPE_ATTRIBUTES, SHAPE_COLORS, SHAPES, SIZES,
                                 render_shape)
from ebm_jax.data.tfds import _tfds_iterate, _tfds_open, _tfds_pipeline
from ebm_jax.data.toy2d import (TOY_DENSITIES, _points_stream, _toy_stream, points_split,
                                sample_toy2d, toy2d_log_density)

# =================================================================== public entry points


def get_info(cfg: settings_lib.DataSettings, *, process_index: int = 0,
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
  if cfg.name == "points":
    return DatasetInfo("points", (2,), 0, 0, len(points_split(cfg.path, cfg.split)), ())
  if from_tfds(cfg):
    return _tfds_open(cfg, cfg.split, process_index, process_count)[1]
  levels, attributes = _offline_meta(cfg.name)
  key, class_names = _select_attribute(cfg.name, cfg.attribute, attributes)
  total = _offline_size(cfg, cfg.split)
  return DatasetInfo(
      name=cfg.name, shape=(cfg.image_size, cfg.image_size, cfg.channels),
      num_classes=len(class_names) if key else 0, levels=levels,
      num_examples=len(range(process_index, total, process_count)), class_names=class_names)


def make_stream(cfg: settings_lib.DataSettings, *, batch_size: int, seed: int,
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
  if cfg.name == "points":
    return _points_stream(cfg, batch_size, seed, start_step, process_index, process_count)
  if from_tfds(cfg):
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


def load_arrays(cfg: settings_lib.DataSettings, n: int, *, split: str | None = None,
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
  if cfg.name == "points":
    x = points_split(cfg.path, split)
    order = np.random.default_rng([seed, 0]).permutation(len(x))[:n]
    return {"image": x[order], "label": np.zeros((len(order), 0), np.float32)}
  if from_tfds(cfg):
    source, _ = _tfds_open(cfg, split, 0, 1)
    ds = _tfds_pipeline(source, cfg, batch_size=n, seed=seed, skip=0, repeat=False,
                        drop_remainder=False, take=n)
    return next(_tfds_iterate(ds))
  arrays = _offline_arrays(cfg, split)
  key, _ = _select_attribute(cfg.name, cfg.attribute, arrays.attributes)
  total = arrays.images.shape[0]
  order = np.random.default_rng([seed, 0]).permutation(total)[:n]
  return _array_batch(cfg, arrays, key, order)


# =================================================================== held-out images
__all__ += ["as_settings", "split_images", "test_images", "test_split", "to_unit"]


def split_images(data, n: int, *, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images in [0, 1], one-hot labels) of the first n examples of a seeded shuffle of `split`
  (`data`: the config's data section, a ConfigDict or settings.DataSettings)."""
  cfg = as_settings(data)
  info = get_info(cfg)
  batch = load_arrays(cfg, n, split=split, seed=seed)
  return to_unit(batch["image"], info.levels), batch["label"]


def test_images(data, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images in [0, 1], one-hot labels) of the held-out split of the data (`test_split`)."""
  return split_images(data, n, split=test_split(data.name), seed=seed)
