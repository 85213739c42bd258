"""The feature classifier behind sample quality on the offline datasets: a small CNN trained on
the dataset's train split (accuracy on its test split stored with it), cached under
`files.cache_dir()` (or --cache_dir), whose penultimate layer gives the Fréchet features."""

import dataclasses
import functools
import json
import os
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebm_jax import data as data_lib
from ebm_jax import settings as settings_lib
from ebm_jax.errors import UserError

DATASETS = ("digits", "fashion_mnist", "shapes")  # offline image sets with labels


class Classifier(nn.Module):
  """A small CNN (or MLP for 2-D data) whose penultimate layer gives the quality features."""
  num_classes: int
  features: int = 128

  @nn.compact
  def __call__(self, x, return_features: bool = False):
    if x.ndim == 4:
      for width in (32, 64):
        x = nn.relu(nn.Conv(width, (3, 3))(x))
        x = nn.relu(nn.Conv(width, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
      x = x.reshape((x.shape[0], -1))
    h = nn.relu(nn.Dense(self.features)(x))
    return h if return_features else nn.Dense(self.num_classes)(h)


@dataclasses.dataclass
class FeatureNet:
  """A trained classifier: `features(x)` (N, D) and `predict(x)` (N,) on images in [0, 1]."""
  module: Classifier
  params: dict
  meta: dict

  def _batched(self, fn, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(fn(self.params, jnp.asarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)])

  def features(self, x: np.ndarray) -> np.ndarray:
    return self._batched(_apply_features(self.module), x)

  def predict(self, x: np.ndarray) -> np.ndarray:
    return self._batched(_apply_logits(self.module), x).argmax(-1)


def classifier_command(data: str, data_path: str, image_size: int, channels: int,
                       attribute: str, steps: int, seed: int, cache_dir: str) -> None:
  """`evaluate classifier`: trains the feature classifier of a dataset and caches it."""
  cfg = data_config(data, data_path, image_size, channels)
  net = train_classifier(cfg, attribute, steps=steps, seed=seed,
                         log=lambda s: print(s, flush=True))
  path = save_classifier(net, cache_dir)
  print(f"wrote {path}: test accuracy {net.meta['test_accuracy']:.4f}")


@functools.lru_cache(maxsize=8)
def _apply_features(module):
  return jax.jit(lambda p, x: module.apply({"params": p}, x, return_features=True))


@functools.lru_cache(maxsize=8)
def _apply_logits(module):
  return jax.jit(lambda p, x: module.apply({"params": p}, x))


def classifier_key(data_cfg: settings_lib.DataSettings, attribute: str) -> str:
  if data_cfg.name in data_lib.POINT_DATASETS:
    raise UserError("the feature classifier needs an image dataset with labels; "
                    f"data.name={data_cfg.name} has none")
  if data_cfg.name in data_lib.TFDS_NAMES:
    images = [n for n in data_lib.OFFLINE_DATASETS if n not in data_lib.POINT_DATASETS]
    raise UserError(
        f"data.name={data_cfg.name}: the project's feature classifier is for offline datasets "
        f"({', '.join(images)}); for tfds datasets use `export` and an "
        "FID tool (README, 'Inspecting a run')")
  attribute = attribute or ("shape" if data_cfg.name == "shapes" else "class")
  return (f"{data_cfg.name}_{attribute}_{data_cfg.image_size}x{data_cfg.image_size}"
          f"x{data_cfg.channels}")


def _labelled(data_cfg, attribute: str, split: str, n: int) -> tuple[np.ndarray, np.ndarray, int]:
  cfg = data_lib.as_settings(
      data_cfg, attribute=attribute or ("shape" if data_cfg.name == "shapes" else "class"))
  info = data_lib.get_info(cfg)
  batch = data_lib.load_arrays(cfg, n, split=split, seed=1)
  x = data_lib.to_unit(batch["image"], info.levels)
  return x, batch["label"].argmax(-1), info.num_classes


def train_classifier(data_cfg: settings_lib.DataSettings, attribute: str = "", *,
                     steps: int = 1500, batch_size: int = 128, seed: int = 0,
                     log: Callable[[str], None] = print) -> FeatureNet:
  """Trains the feature classifier on the train split; accuracy measured on the test split."""
  x, y, num_classes = _labelled(data_cfg, attribute, "train", 10**9)
  x_test, y_test, _ = _labelled(data_cfg, attribute, "test", 10**9)
  module = Classifier(num_classes)
  params = module.init(jax.random.key(seed), jnp.asarray(x[:1]))["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits = module.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  order = np.array([], int)
  start, every = time.time(), max(1, steps // 10)
  for i in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(x))])
    idx, order = order[:batch_size], order[batch_size:]
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
    if (i + 1) % every == 0 or i + 1 == steps:
      took = time.time() - start
      log(f"classifier step {i + 1}/{steps}: loss {float(loss):.4f}, {took:.0f} s, "
          f"ETA {took / (i + 1) * (steps - i - 1):.0f} s")
  net = FeatureNet(module, params, {})
  accuracy = float((net.predict(x_test) == y_test).mean())
  net.meta = {"key": classifier_key(data_cfg, attribute), "num_classes": num_classes,
              "test_accuracy": accuracy, "train_examples": len(x), "test_examples": len(x_test),
              "steps": steps, "batch_size": batch_size}
  return net


def save_classifier(net: FeatureNet, cache_dir: str) -> str:
  from flax import serialization  # pylint: disable=import-outside-toplevel
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, f"classifier_{net.meta['key']}")
  with open(path + ".msgpack.tmp", "wb") as f:
    f.write(serialization.to_bytes(net.params))
  with open(path + ".json", "w") as f:
    json.dump(net.meta, f, indent=2)
  os.replace(path + ".msgpack.tmp", path + ".msgpack")  # the weights land last, whole
  return path + ".msgpack"


def load_classifier(data_cfg: settings_lib.DataSettings, attribute: str,
                    cache_dir: str) -> FeatureNet:
  from flax import serialization  # pylint: disable=import-outside-toplevel
  key = classifier_key(data_cfg, attribute)
  path = os.path.join(cache_dir, f"classifier_{key}")
  if not os.path.exists(path + ".msgpack"):
    attr = f" --attribute={attribute}" if attribute else ""
    raise UserError(
        f"no feature classifier for {key} in {cache_dir}; train it once with: python -m "
        f"ebm_jax.evaluate classifier --data={data_cfg.name} --image_size={data_cfg.image_size}"
        f" --channels={data_cfg.channels}{attr}"
        f"{f' --data_path={data_cfg.path}' if data_cfg.path else ''} --cache_dir={cache_dir}")
  with open(path + ".json") as f:
    meta = json.load(f)
  module = Classifier(meta["num_classes"])
  shape = (1, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
  template = module.init(jax.random.key(0), jnp.zeros(shape))["params"]
  with open(path + ".msgpack", "rb") as f:
    params = serialization.from_bytes(template, f.read())
  return FeatureNet(module, params, meta)


def load_or_train(data_cfg: settings_lib.DataSettings, attribute: str, cache_dir: str, *,
                  steps: int, log: Callable[[str], None] = print) -> FeatureNet:
  """The cached classifier of this data, trained first (with progress lines) and cached when
  there is none."""
  try:
    return load_classifier(data_cfg, attribute, cache_dir)
  except UserError:
    log(f"Training the {data_cfg.name} feature classifier ({steps} steps, once; cached in "
        f"{cache_dir})")
    net = train_classifier(data_cfg, attribute, steps=steps, log=log)
    save_classifier(net, cache_dir)
    return net


SIZES = {"digits": (8, 1), "fashion_mnist": (28, 1), "shapes": (32, 3)}  # native (size, channels)


def data_config(name: str, path: str = "", image_size: int = 0,
                channels: int = 0) -> settings_lib.DataSettings:
  """The data config a classifier is trained on: `name` at its native size unless given, its
  files in `path` (as data.path) when not in the usual place."""
  if name not in DATASETS:
    raise UserError(f"--data={name!r}: one of {', '.join(DATASETS)}")
  from ebm_jax.configs import default  # pylint: disable=import-outside-toplevel
  size, chans = SIZES[name]
  return data_lib.as_settings(default.get_config().data, name=name, path=path,
                              image_size=image_size or size, channels=channels or chans)
