"""Sample quality of a run: the Fréchet distance of feature Gaussians (samples vs the test
split, with the train-vs-test distance as the floor a perfect model reaches), class coverage,
along one long chain (paper Fig. 7/8), and the training loop's periodic quality hook.

Every sample comes from the one test-time sampler (ebm_jax/sampling.py) under EMA parameters.
"""

import json
import time
from typing import Callable

import jax
import numpy as np
from absl import logging

from ebm_jax import data as data_lib
from ebm_jax import sampling
from ebm_jax import settings as settings_lib
from ebm_jax.restore import Run
from ebm_jax.errors import UserError
from ebm_jax.eval import features as features_lib
from ebm_jax.eval import stats


def generate_samples(run: Run, num: int, *, steps: int | None, seed: int,
                     label: int = -1, batch_size: int | None = None) -> np.ndarray:
  """num samples of the run by its test-time chain (settings.sample), under EMA parameters,
  batch_size chains at a time (default: settings.sample.batch_size)."""
  labels = sampling.default_labels(num, run.info.num_classes, label)
  x, _ = sampling.for_model(run.settings, run.model, run.info.shape, steps=steps,
                            batch_size=batch_size).draw(
      jax.random.key(seed), num, labels, run.variables)
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


def quality(run: Run, net: features_lib.FeatureNet, *, num: int, steps: int | None,
            seed: int = 0, samples: np.ndarray | None = None) -> dict:
  """Fréchet distance and class coverage of `num` samples against the test split; the
  distance between the train and test splits is reported as the floor a perfect model gets."""
  _check_num(num, net)
  if samples is None:
    samples = generate_samples(run, num, steps=steps, seed=seed)
  real, _ = data_lib.test_images(run.settings.data, num, seed=seed)
  train_real, _ = data_lib.split_images(run.settings.data, num, split="train", seed=seed)
  stats_real = stats.gaussian_stats(net.features(real))
  return {"frechet_distance": stats.frechet_distance(
              *stats.gaussian_stats(net.features(samples)), *stats_real),
          "frechet_distance_train_vs_test": stats.frechet_distance(
              *stats.gaussian_stats(net.features(train_real)), *stats_real),
          "coverage": stats.class_coverage(net.predict(samples), net.meta["num_classes"]),
          **pixel_stats(samples),
          "num_samples": int(len(samples)), "num_real": int(len(real)),
          "classifier_test_accuracy": net.meta["test_accuracy"]}


def chain_quality(run: Run, net: features_lib.FeatureNet, *, num: int, steps: int,
                  eval_every: int, seed: int = 0, augment: bool | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
  """A long test-time chain from noise (paper Fig. 7/8): Langevin steps with an augmentation
  transition every settings.sample.block_steps steps, for `steps` steps; every `eval_every`
  steps the Fréchet distance, class coverage and mean energy of the current samples."""
  _check_num(num, net)
  settings, shape = run.settings, tuple(run.info.shape)
  real, _ = data_lib.test_images(settings.data, num, seed=seed)
  stats_real = stats.gaussian_stats(net.features(real))
  rows, start = [], time.time()
  chain = sampling.along_chain(
      sampling.model_energy(run.model), sampling.settings_from_config(settings),
      jax.random.key(seed), num, shape, sampling.default_labels(num, run.info.num_classes),
      steps=steps, every=eval_every, variables=run.variables,
      batch_size=settings.sample.batch_size,
      transition=sampling.transition_from_config(settings, shape, augment))
  for done, x, mean_energy in chain:
    cov = stats.class_coverage(net.predict(x), net.meta["num_classes"])
    rows.append({"step": done, "frechet_distance": stats.frechet_distance(
        *stats.gaussian_stats(net.features(x)), *stats_real),
                 "coverage_entropy": cov["entropy"], "classes_present": cov["classes_present"],
                 "mean_energy": mean_energy, **pixel_stats(x)})
    eta = (time.time() - start) / done * (steps - done)
    log(json.dumps(rows[-1]) + f"  [{done}/{steps} steps, ETA {eta:.0f} s]")
  return rows


def evaluate(run: Run, net: features_lib.FeatureNet, *, num: int, steps: int | None,
             seed: int, eval_every: int = 0, log: Callable[[str], None] = print) -> dict:
  """`evaluate quality`: `quality` of num samples, or with eval_every > 0 `chain_quality`
  along one chain of `steps` steps."""
  if not eval_every:
    return quality(run, net, num=num, steps=steps, seed=seed)
  rows = chain_quality(run, net, num=num, steps=steps, eval_every=eval_every, seed=seed,
                       log=log)
  return {"along_chain": rows, "classifier_test_accuracy": net.meta["test_accuracy"]}


class TrainingQuality:
  """The training loop's quality hook (train.eval_every): `eval.num` samples from the EMA
  parameters by the test-time chain, in a jitted sampler of its own (compiled once, parameters
  passed per call), scored by pixel statistics on every image dataset and, on the offline
  datasets, by the feature classifier (trained first, with progress lines, when not cached);
  with eval.fid, also the standard FID of eval.fid_num samples (drawn in batches of
  sample.batch_size) against the test split, whose statistics are cached."""

  def __init__(self, config: settings_lib.Settings, model, info, cache_dir: str,
               log: Callable[[str], None] = logging.info):
    self.config, self.info, self.num = config, info, int(config.eval.num)
    self.sampler = sampling.for_model(config, model, info.shape, batch_size=self.num)  # one batch
    self.net, self.stats_real, self.fid = None, None, None
    if config.eval.fid:
      from ebm_jax.eval import fid  # pylint: disable=import-outside-toplevel
      network = fid.load_network(cache_dir, log=log)  # missing weights: a UserError at set-up
      ref = fid.reference_stats(network, config.data, "test", 0, cache_dir, log=log)
      self.fid = (network, ref, sampling.for_model(config, model, info.shape))
    if config.data.name in features_lib.DATASETS:
      self.net = features_lib.load_or_train(config.data, config.data.attribute, cache_dir,
                                            steps=config.eval.classifier_steps, log=log)
      _check_num(self.num, self.net)
      real, _ = data_lib.test_images(config.data, self.num)
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
    if self.fid is not None:
      from ebm_jax.eval import fid  # pylint: disable=import-outside-toplevel
      network, ref, sampler = self.fid
      n = int(self.config.eval.fid_num)
      samples, _ = sampler.draw(jax.random.fold_in(key, 1), n,
                                sampling.default_labels(n, self.info.num_classes),
                                {"params": ema_params, **model_state})
      scalars["quality/fid"] = fid.fid(fid.statistics(network.features(samples)), ref)
      scalars["quality/fid_num"] = float(n)
    return scalars, x
