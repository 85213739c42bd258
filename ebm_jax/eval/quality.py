"""Sample quality of a run: the Fréchet distance of feature Gaussians (samples vs the test
split, with the train-vs-test distance as the floor a perfect model reaches), class coverage,
along one long chain (paper Fig. 7/8), and the training loop's periodic quality hook.

Every sample comes from the one test-time sampler (ebm_jax/sampling.py) under EMA parameters.
"""

import json
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from ebm_jax import data as data_lib
from ebm_jax import restore, sampling
from ebm_jax.errors import UserError
from ebm_jax.eval import features as features_lib
from ebm_jax.eval import stats


def _tfds_test_split(name: str) -> str:
  return {"celeba_hq": "train[-3000:]", "lsun_bedroom": "validation"}.get(name, "test")


def test_images(config, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images in [0, 1], one-hot labels) of the test split of the model's data."""
  cfg = ml_collections.ConfigDict(config.data.to_dict())
  info = data_lib.get_info(cfg)
  split = "test" if cfg.name in data_lib.OFFLINE_DATASETS else _tfds_test_split(cfg.name)
  batch = data_lib.load_arrays(cfg, n, split=split, seed=seed)
  return features_lib.to_unit(batch["image"], info.levels), batch["label"]


def generate_samples(config, model, ema, info, num: int, *, steps: int | None, seed: int,
                     label: int = -1) -> np.ndarray:
  labels = sampling.default_labels(num, info.num_classes, label)
  x, _ = sampling.for_model(config, model, info.shape, steps=steps).draw(
      jax.random.key(seed), num, labels, restore.ema_variables(ema))
  return x


def _check_num(num: int, net: features_lib.FeatureNet) -> None:
  width = int(net.module.features)
  if num <= width:
    raise UserError(f"--num={num}: the Fréchet distance fits a {width}-dimensional Gaussian "
                    f"to the features and needs more than {width} samples (use --num="
                    f"{2 * width} or more)")


def pixel_stats(x: np.ndarray) -> dict:
  """Mean pixel and the fraction of saturated pixels (> 0.95) of samples in [0, 1]."""
  x = np.asarray(x)
  return {"mean_pixel": float(x.mean()), "saturated_frac": float((x > 0.95).mean())}


def quality(config, model, ema, info, net: features_lib.FeatureNet, *, num: int,
            steps: int | None, seed: int = 0, samples: np.ndarray | None = None) -> dict:
  """Fréchet distance and class coverage of `num` samples against the test split; the
  distance between the train and test splits is reported as the floor a perfect model gets."""
  _check_num(num, net)
  if samples is None:
    samples = generate_samples(config, model, ema, info, num, steps=steps, seed=seed)
  real, _ = test_images(config, num, seed=seed)
  train_cfg = ml_collections.ConfigDict(config.data.to_dict())
  train_real = features_lib.to_unit(
      data_lib.load_arrays(train_cfg, num, split="train", seed=seed)["image"], info.levels)
  stats_real = stats.gaussian_stats(net.features(real))
  return {"frechet_distance": stats.frechet_distance(
              *stats.gaussian_stats(net.features(samples)), *stats_real),
          "frechet_distance_train_vs_test": stats.frechet_distance(
              *stats.gaussian_stats(net.features(train_real)), *stats_real),
          "coverage": stats.class_coverage(net.predict(samples), net.meta["num_classes"]),
          **pixel_stats(samples),
          "num_samples": int(len(samples)), "num_real": int(len(real)),
          "classifier_test_accuracy": net.meta["test_accuracy"]}


def chain_quality(config, model, ema, info, net: features_lib.FeatureNet, *, num: int,
                  steps: int, eval_every: int, seed: int = 0, augment: bool | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
  """A long test-time chain from noise (paper Fig. 7/8): Langevin steps with an augmentation
  transition every config.sample.block_steps steps, for `steps` steps; every `eval_every`
  steps the Fréchet distance, class coverage and mean energy of the current samples."""
  _check_num(num, net)
  shape = tuple(info.shape)
  real, _ = test_images(config, num, seed=seed)
  stats_real = stats.gaussian_stats(net.features(real))
  rows, start = [], time.time()
  chain = sampling.along_chain(
      sampling.model_energy(model), sampling.settings_from_config(config), jax.random.key(seed),
      num, shape, sampling.default_labels(num, info.num_classes), steps=steps,
      every=eval_every, variables=restore.ema_variables(ema),
      batch_size=config.sample.batch_size,
      transition=sampling.transition_from_config(config, shape, augment))
  for done, x, mean_energy in chain:
    cov = stats.class_coverage(net.predict(x), net.meta["num_classes"])
    rows.append({"step": done, "frechet_distance": stats.frechet_distance(
        *stats.gaussian_stats(net.features(x)), *stats_real),
                 "coverage_entropy": cov["entropy"], "classes_present": cov["classes_present"],
                 "mean_energy": mean_energy, **pixel_stats(x)})
    eta = (time.time() - start) / done * (steps - done)
    log(json.dumps(rows[-1]) + f"  [{done}/{steps} steps, ETA {eta:.0f} s]")
  return rows


def evaluate(config, model, ema, info, net: features_lib.FeatureNet, *, num: int,
             steps: int | None, seed: int, eval_every: int = 0,
             log: Callable[[str], None] = print) -> dict:
  """`evaluate quality`: `quality` of num samples, or with eval_every > 0 `chain_quality`
  along one chain of `steps` steps."""
  if not eval_every:
    return quality(config, model, ema, info, net, num=num, steps=steps, seed=seed)
  rows = chain_quality(config, model, ema, info, net, num=num, steps=steps,
                       eval_every=eval_every, seed=seed, log=log)
  return {"along_chain": rows, "classifier_test_accuracy": net.meta["test_accuracy"]}


class TrainingQuality:
  """The training loop's quality hook (train.eval_every): `eval.num` samples from the EMA
  parameters by the test-time chain, in a jitted sampler of its own (compiled once, parameters
  passed per call), scored by pixel statistics on every image dataset and, on the offline
  datasets, by the feature classifier (trained first, with progress lines, when not cached)."""

  def __init__(self, config: ml_collections.ConfigDict, model, info, cache_dir: str,
               log: Callable[[str], None] = logging.info):
    self.config, self.info, self.num = config, info, int(config.eval.num)
    self.sampler = sampling.for_model(config, model, info.shape, batch_size=self.num)  # one batch
    self.net, self.stats_real = None, None
    if config.data.name in features_lib.DATASETS:
      self.net = features_lib.load_or_train(config.data, config.data.attribute, cache_dir,
                                            steps=config.eval.classifier_steps, log=log)
      _check_num(self.num, self.net)
      real, _ = test_images(config, self.num)
      self.stats_real = stats.gaussian_stats(self.net.features(real))

  def __call__(self, step: int, ema_params, model_state) -> tuple[dict, np.ndarray]:
    """(scalars under quality/..., the samples) for the EMA parameters at `step`."""
    labels = sampling.default_labels(self.num, self.info.num_classes)
    key = jax.random.fold_in(jax.random.key(self.config.seed + 7), step)
    x, _ = self.sampler.draw(key, self.num, labels, {"params": ema_params, **model_state})
    scalars = {f"quality/{k}": v for k, v in pixel_stats(x).items()}
    if self.net is not None:
      cov = stats.class_coverage(self.net.predict(x), self.net.meta["num_classes"])
      scalars["quality/frechet"] = stats.frechet_distance(
          *stats.gaussian_stats(self.net.features(x)), *self.stats_real)
      scalars["quality/coverage_entropy"] = cov["entropy"]
      scalars["quality/classes"] = float(cov["classes_present"])
    return scalars, x
