"""tensorflow-datasets sources: deterministic per-process tf.data pipelines, and the messages
for missing data. TensorFlow is imported only here."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ebm_jax.errors import DataError
from ebm_jax.data.base import DatasetInfo, TFDS_NAMES, _select_attribute
from ebm_jax.data.images import _LUMA

if TYPE_CHECKING:
  from ebm_jax import settings as settings_lib

Batch = dict[str, np.ndarray]


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


def _tfds_open(cfg: settings_lib.DataSettings, split: str, process_index: int,
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


def _tfds_ensure_data(tfds: Any, builder: Any, cfg: settings_lib.DataSettings,
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


def _tfds_pipeline(source: _TfdsSource, cfg: settings_lib.DataSettings, *, batch_size: int,
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
