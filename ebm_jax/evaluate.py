"""Evaluation of trained models: sample quality, OOD detection; library and CLI.

  python -m ebm_jax.evaluate classifier --config=configs/fashion_mnist.py   # once per dataset
  python -m ebm_jax.evaluate quality --workdir=runs/fmnist [--num=1000 --steps=...]
  python -m ebm_jax.evaluate quality --workdir=runs/fmnist --steps=5000 --eval_every=500
  python -m ebm_jax.evaluate ood --workdir=runs/fmnist [--ood=uniform,flip_v,my_set.npz]
  python -m ebm_jax.evaluate export --workdir=runs/cifar10 --num=50000   # for FID tools

Sample quality on offline datasets is the Fréchet distance between Gaussians fitted to the
penultimate-layer features of a small classifier the project trains on the same data (cached
under --cache_dir, trained by the `classifier` command, its test accuracy stored with it), plus
class coverage: the entropy of the classifier's predicted-class histogram of the samples and
the number of classes that receive at least 1 % of them. For tfds datasets, `export` writes
samples as PNG files and one .npz in the layout that FID tools read (README: scoring them with
the `fid` extra, torch-fidelity).

OOD detection scores an image by -E(x) (the sum over multiscale heads) under the EMA
parameters and reports the AUROC of the in-distribution test split against each OOD set
(paper Table 3): a higher AUROC means the model gives OOD images higher energy.
"""

import dataclasses
import functools
import json
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags

from ebm_jax import config_lib
from ebm_jax import data as data_lib
from ebm_jax import sample as sample_lib

# =================================================================== metrics


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of (N, D) features, in float64."""
  f = np.asarray(features, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½), the Fréchet (2-Wasserstein²) distance of two
  Gaussians. The matrix square root is scipy's; its imaginary rounding residue is dropped."""
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():  # singular product: regularise as FID implementations do
    offset = np.eye(sigma1.shape[0]) * 1e-6
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def class_coverage(predicted: np.ndarray, num_classes: int, min_share: float = 0.01) -> dict:
  """Entropy (nats; log(num_classes) when uniform) of the predicted-class histogram and the
  number of classes holding at least `min_share` of the predictions."""
  counts = np.bincount(np.asarray(predicted), minlength=num_classes).astype(np.float64)
  p = counts / counts.sum()
  nz = p[p > 0]
  return {"entropy": float(-(nz * np.log(nz)).sum()), "max_entropy": float(np.log(num_classes)),
          "classes_present": int((p >= min_share).sum()), "num_classes": num_classes,
          "histogram": counts.astype(int).tolist()}


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
  """Area under the ROC curve for telling in-distribution (positive) from OOD by the score."""
  from sklearn.metrics import roc_auc_score  # pylint: disable=import-outside-toplevel
  s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
  labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
  return float(roc_auc_score(labels, np.concatenate([s_in, s_out])))


# =================================================================== feature classifier


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


@functools.lru_cache(maxsize=8)
def _apply_features(module):
  return jax.jit(lambda p, x: module.apply({"params": p}, x, return_features=True))


@functools.lru_cache(maxsize=8)
def _apply_logits(module):
  return jax.jit(lambda p, x: module.apply({"params": p}, x))


def to_unit(images: np.ndarray, levels: int) -> np.ndarray:
  """Stored integer levels -> [0, 1] at the centre of each level's dequantisation interval."""
  if levels == 0:
    return np.asarray(images, np.float32)
  return (np.asarray(images, np.float32) + 0.5) / levels


def classifier_key(data_cfg: ml_collections.ConfigDict, attribute: str) -> str:
  if data_cfg.name == "toy2d":
    raise config_lib.UserError("the feature classifier needs an image dataset with labels; "
                               "data.name=toy2d has none")
  if data_cfg.name in data_lib.TFDS_NAMES:
    raise config_lib.UserError(
        f"data.name={data_cfg.name}: the project's feature classifier is for offline datasets "
        f"({', '.join(data_lib.OFFLINE_DATASETS[:-1])}); for tfds datasets use `export` and an "
        "FID tool (README, 'Inspecting a run')")
  attribute = attribute or ("shape" if data_cfg.name == "shapes" else "class")
  return (f"{data_cfg.name}_{attribute}_{data_cfg.image_size}x{data_cfg.image_size}"
          f"x{data_cfg.channels}")


def _labelled(data_cfg, attribute: str, split: str, n: int) -> tuple[np.ndarray, np.ndarray, int]:
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.attribute = attribute or ("shape" if cfg.name == "shapes" else "class")
  info = data_lib.get_info(cfg)
  batch = data_lib.load_arrays(cfg, n, split=split, seed=1)
  return to_unit(batch["image"], info.levels), batch["label"].argmax(-1), info.num_classes


def train_classifier(data_cfg: ml_collections.ConfigDict, attribute: str = "", *,
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
  for i in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(x))])
    idx, order = order[:batch_size], order[batch_size:]
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
    if (i + 1) % 500 == 0:
      log(f"classifier step {i + 1}/{steps}: loss {float(loss):.4f}")
  net = FeatureNet(module, params, {})
  accuracy = float((net.predict(x_test) == y_test).mean())
  net.meta = {"key": classifier_key(data_cfg, attribute), "num_classes": num_classes,
              "test_accuracy": accuracy, "train_examples": len(x), "test_examples": len(x_test),
              "steps": steps, "batch_size": batch_size}
  return net


def default_cache_dir() -> str:
  return os.environ.get("EBM_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                      "ebm_jax"))


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


def load_classifier(data_cfg: ml_collections.ConfigDict, attribute: str,
                    cache_dir: str) -> FeatureNet:
  from flax import serialization  # pylint: disable=import-outside-toplevel
  key = classifier_key(data_cfg, attribute)
  path = os.path.join(cache_dir, f"classifier_{key}")
  if not os.path.exists(path + ".msgpack"):
    attr = f" --attribute={attribute}" if attribute else ""
    raise config_lib.UserError(
        f"no feature classifier for {key} in {cache_dir}; train it once with: python -m "
        f"ebm_jax.evaluate classifier --data={data_cfg.name} --image_size={data_cfg.image_size}"
        f" --channels={data_cfg.channels}{attr} --cache_dir={cache_dir}")
  with open(path + ".json") as f:
    meta = json.load(f)
  module = Classifier(meta["num_classes"])
  shape = (1, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
  template = module.init(jax.random.key(0), jnp.zeros(shape))["params"]
  with open(path + ".msgpack", "rb") as f:
    params = serialization.from_bytes(template, f.read())
  return FeatureNet(module, params, meta)


# =================================================================== models in a workdir


def energy_scores(model, variables, images: np.ndarray, labels: np.ndarray | None = None,
                  batch: int = 250) -> np.ndarray:
  """-E(x) summed over heads, (N,); unconditional models ignore labels."""
  fn = jax.jit(lambda x, y: -model.apply(variables, x, y).sum(-1))
  out = []
  for i in range(0, len(images), batch):
    y = None if labels is None else jnp.asarray(labels[i:i + batch])
    out.append(np.asarray(fn(jnp.asarray(images[i:i + batch], jnp.float32), y)))
  return np.concatenate(out)


def test_images(config, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images in [0, 1], one-hot labels) of the test split of the model's data."""
  cfg = ml_collections.ConfigDict(config.data.to_dict())
  info = data_lib.get_info(cfg)
  split = "test" if cfg.name in data_lib.OFFLINE_DATASETS else _tfds_test_split(cfg.name)
  batch = data_lib.load_arrays(cfg, n, split=split, seed=seed)
  return to_unit(batch["image"], info.levels), batch["label"]


def _tfds_test_split(name: str) -> str:
  return {"celeba_hq": "train[-3000:]", "lsun_bedroom": "validation"}.get(name, "test")


def generate_samples(config, model, ema, info, num: int, *, steps: int | None, seed: int,
                     label: int = -1) -> np.ndarray:
  settings = sample_lib.chain_settings(config, steps=steps)
  labels = sample_lib.default_labels(num, info.num_classes, label)
  x, _ = sample_lib.generate(config, model, {"params": ema["params"], **ema["model_state"]},
                             jax.random.key(seed), num, tuple(info.shape), labels,
                             augment=config.sample.augment, **settings)
  return x


def quality(config, model, ema, info, net: FeatureNet, *, num: int, steps: int | None,
            seed: int = 0, samples: np.ndarray | None = None) -> dict:
  """Fréchet distance and class coverage of `num` samples against the test split; the
  distance between the train and test splits is reported as the floor a perfect model gets."""
  if samples is None:
    samples = generate_samples(config, model, ema, info, num, steps=steps, seed=seed)
  real, _ = test_images(config, num, seed=seed)
  train_cfg = ml_collections.ConfigDict(config.data.to_dict())
  train_real = to_unit(data_lib.load_arrays(train_cfg, num, split="train", seed=seed)["image"],
                       info.levels)
  stats_real = gaussian_stats(net.features(real))
  out = {"frechet_distance": frechet_distance(*gaussian_stats(net.features(samples)),
                                              *stats_real),
         "frechet_distance_train_vs_test": frechet_distance(
             *gaussian_stats(net.features(train_real)), *stats_real),
         "coverage": class_coverage(net.predict(samples), net.meta["num_classes"]),
         "num_samples": int(len(samples)), "num_real": int(len(real)),
         "classifier_test_accuracy": net.meta["test_accuracy"]}
  return out


def chain_quality(config, model, ema, info, net: FeatureNet, *, num: int, steps: int,
                  eval_every: int, seed: int = 0, augment: bool | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
  """A long test-time chain from noise (paper Fig. 7/8): Langevin steps with an augmentation
  transition every config.sample.block_steps steps, for `steps` steps; every `eval_every`
  steps the Fréchet distance, class coverage and mean energy of the current samples."""
  from ebm_jax import augment as augment_lib  # pylint: disable=import-outside-toplevel
  from ebm_jax import langevin  # pylint: disable=import-outside-toplevel
  lc, block = config.langevin, max(config.sample.block_steps, 1)
  step_size = config.sample.step_size if config.sample.step_size > 0 else lc.step_size
  use_aug = config.sample.augment if augment is None else augment
  transition = (functools.partial(augment_lib.augment_batch,
                                  augment_lib.make_transition(config.augment))
                if use_aug and len(info.shape) == 3 else None)
  variables = {"params": ema["params"], **ema["model_state"]}
  y_all = sample_lib.default_labels(num, info.num_classes)
  batch = min(config.sample.batch_size, num)

  @jax.jit
  def segment(key, x, y):
    kernel = langevin.build_kernel(lambda v: model.apply(variables, v, y), step_size,
                                   lc.grad_clip, (0.0, 1.0) if lc.clip_x else None, lc.sampler)
    x, infos = langevin.run_test_chain(kernel, transition, key, x,
                                       num_blocks=eval_every // block,
                                       block_steps=block, final_steps=eval_every % block,
                                       noise_scale=lc.noise_scale)
    return x, infos.energy[-1]

  lo, hi = config.buffer.noise_range
  rng = jax.random.key(seed)
  init_key, rng = jax.random.split(rng)
  xs = [jax.random.uniform(jax.random.fold_in(init_key, i), (batch,) + tuple(info.shape),
                           minval=lo, maxval=hi) for i in range(0, num, batch)]
  ys = [None if y_all is None else jnp.asarray(np.resize(y_all[i:i + batch],
                                                         (batch, y_all.shape[1])))
        for i in range(0, num, batch)]
  real, _ = test_images(config, num, seed=seed)
  stats_real = gaussian_stats(net.features(real))
  rows = []
  for done in range(eval_every, steps + 1, eval_every):
    energies = []
    for b in range(len(xs)):
      xs[b], e = segment(jax.random.fold_in(jax.random.fold_in(rng, done), b), xs[b], ys[b])
      energies.append(np.asarray(e))
    x = np.concatenate([np.asarray(v) for v in xs])[:num]
    cov = class_coverage(net.predict(x), net.meta["num_classes"])
    rows.append({"step": done, "frechet_distance": frechet_distance(
        *gaussian_stats(net.features(x)), *stats_real), "coverage_entropy": cov["entropy"],
                 "classes_present": cov["classes_present"],
                 "mean_energy": float(np.concatenate(energies)[:num].mean())})
    log(json.dumps(rows[-1]))
  return rows


# =================================================================== OOD sets

OOD_SETS = ("uniform", "constant", "interpolation", "flip_v", "digits")


def ood_images(name: str, shape: tuple[int, ...], test: np.ndarray, n: int,
               seed: int = 0) -> np.ndarray:
  """An OOD set of n images in [0, 1] with the model's shape: a name of OOD_SETS or a path to
  an .npz of images (uint8, or floats in [0, 1]; NHW or NHWC; resized to the model's input)."""
  rng = np.random.default_rng(seed)
  if name == "uniform":
    return rng.uniform(size=(n,) + shape).astype(np.float32)
  if name == "constant":
    return np.broadcast_to(rng.uniform(size=(n, 1, 1, shape[-1])), (n,) + shape).astype(
        np.float32)
  if name == "interpolation":
    i, j = rng.integers(len(test), size=(2, n))
    return (0.5 * (test[i] + test[j])).astype(np.float32)
  if name == "flip_v":
    return test[:n, ::-1].copy()
  if name == "digits":
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits().images.astype(np.float32)[..., None] * (255.0 / 16.0)
    return _fit_images(np.rint(digits).astype(np.uint8)[:n], shape)
  if name.endswith(".npz"):
    if not os.path.exists(name):
      raise config_lib.UserError(f"--ood: no such file {name}")
    with np.load(name) as f:
      key = "images" if "images" in f else ("samples" if "samples" in f else f.files[0])
      arr = f[key]
    return _fit_images(arr[:n], shape)
  raise config_lib.UserError(f"--ood: unknown set {name!r}; use one of {', '.join(OOD_SETS)} "
                             "or a path to an .npz of images")


def _fit_images(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """uint8 or [0, 1] float NHW(C) images -> float32 (N, H, W, C) of the model's shape."""
  arr = np.asarray(arr)
  if arr.ndim == 3:
    arr = arr[..., None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
    raise config_lib.UserError(f"--ood: expected images (N, H, W[, 1 or 3]), got {arr.shape}")
  if arr.dtype != np.uint8:
    if arr.min() < 0 or arr.max() > 1:
      raise config_lib.UserError("--ood: float images must lie in [0, 1]")
    arr = np.rint(arr * 255).astype(np.uint8)
  arr = data_lib.convert_channels(data_lib.resize_images(arr, shape[0]), shape[-1])
  return to_unit(arr, 256)


def ood(config, model, ema, info, sets: list[str], *, num: int, seed: int = 0) -> dict:
  """AUROC of the test split against each OOD set, scored by -E under EMA params."""
  if len(info.shape) != 3:
    raise config_lib.UserError("OOD detection needs an image model")
  variables = {"params": ema["params"], **ema["model_state"]}
  test, labels = test_images(config, num, seed=seed)
  # JEM scores log p(x) = −E(x) = logsumexp f(x), with no label (as JEM's OOD results).
  y = labels if info.num_classes and not config.model.get("jem", False) else None
  s_in = energy_scores(model, variables, test, y)
  rows = {}
  for name in sets:
    if name == "digits" and config.data.name == "digits":
      raise config_lib.UserError("--ood=digits: the model was trained on digits")
    x_out = ood_images(name, tuple(info.shape), test, len(test), seed)
    y_out = None if y is None else y[:len(x_out)]
    s_out = energy_scores(model, variables, x_out, y_out)
    rows[name] = {"auroc": auroc(s_in, s_out), "num": int(len(x_out)),
                  "mean_energy": float(-s_out.mean())}
  return {"in_distribution_mean_energy": float(-s_in.mean()), "num_in": int(len(test)),
          "sets": rows}


def jem_accuracy(config, model, ema, num: int, seed: int = 0, batch: int = 250) -> dict:
  """Test accuracy of a JEM model's classifier head under the EMA parameters."""
  if not config.model.get("jem", False):
    raise config_lib.UserError("`accuracy` is for JEM models (model.jem=True); this workdir's "
                               "model is an energy net without class logits")
  variables = {"params": ema["params"], **ema["model_state"]}
  x, labels = test_images(config, num, seed=seed)
  fn = jax.jit(lambda v: model.apply(variables, v, method=type(model).logits).argmax(-1))
  pred = np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch], jnp.float32)))
                         for i in range(0, len(x), batch)])
  return {"test_accuracy": float((pred == labels.argmax(-1)).mean()), "num": int(len(x))}


def markdown_table(result: dict) -> str:
  lines = ["| OOD set | AUROC |", "|---|---|"]
  lines += [f"| {k} | {v['auroc']:.3f} |" for k, v in result["sets"].items()]
  return "\n".join(lines)


# =================================================================== CLI

FLAGS = flags.FLAGS
COMMANDS = ("classifier", "quality", "ood", "export", "accuracy")


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training directory with checkpoints.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_integer("num", 1000, "Samples / test images / OOD images to use.")
  flags.DEFINE_integer("steps", None, "Langevin steps of the sampling chain (default: config).")
  flags.DEFINE_integer("seed", 0, "Seed of sampling and of the data subsets.")
  flags.DEFINE_integer("eval_every", 0, "quality: run one long chain of --steps steps and "
                       "measure the samples every this many steps (0: only at the end).")
  flags.DEFINE_list("ood", ["uniform", "constant", "interpolation", "flip_v"],
                    f"OOD sets: {', '.join(OOD_SETS)} or paths to .npz files.")
  flags.DEFINE_string("data", None, "classifier: dataset (digits, fashion_mnist, shapes).")
  flags.DEFINE_integer("image_size", 0, "classifier: image size (default: the dataset's).")
  flags.DEFINE_integer("channels", 0, "classifier: channels (default: the dataset's).")
  flags.DEFINE_string("attribute", "", "classifier: label attribute (shapes: shape, color, "
                      "size, position).")
  flags.DEFINE_integer("classifier_steps", 1500, "classifier: optimisation steps.")
  flags.DEFINE_string("cache_dir", None, "Where feature classifiers are kept "
                      "(default: $EBM_JAX_CACHE or ~/.cache/ebm_jax).")
  flags.DEFINE_string("out", None, "Also write the JSON result here (export: the folder).")
  flags.DEFINE_bool("debug", False, "Show tracebacks for user errors.")


DATA_DEFAULTS = {"digits": (8, 1), "fashion_mnist": (28, 1), "shapes": (32, 3)}


def _classifier_data_cfg() -> ml_collections.ConfigDict:
  if FLAGS.data not in DATA_DEFAULTS:
    raise config_lib.UserError(f"--data={FLAGS.data!r}: one of {', '.join(DATA_DEFAULTS)}")
  size, channels = DATA_DEFAULTS[FLAGS.data]
  from configs import default  # pylint: disable=import-outside-toplevel
  cfg = default.get_config().data
  cfg.name, cfg.image_size = FLAGS.data, FLAGS.image_size or size
  cfg.channels = FLAGS.channels or channels
  return cfg


def _emit(result: dict) -> None:
  text = json.dumps(result, indent=2)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


def run(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise config_lib.UserError(f"give one command: {' | '.join(COMMANDS)} "
                               f"(got {' '.join(argv[1:]) or 'none'})")
  command = argv[1]
  cache_dir = FLAGS.cache_dir or default_cache_dir()
  for name in ("num",):
    if getattr(FLAGS, name) < 2:
      raise config_lib.UserError(f"--{name} must be at least 2")
  if FLAGS.steps is not None and FLAGS.steps < 0:
    raise config_lib.UserError("--steps must be >= 0")
  if FLAGS.eval_every < 0 or (FLAGS.eval_every and (FLAGS.steps or 0) < FLAGS.eval_every):
    raise config_lib.UserError("--eval_every must be >= 0, and with it --steps >= --eval_every")
  if command == "classifier":
    if FLAGS.classifier_steps < 1:
      raise config_lib.UserError("--classifier_steps must be >= 1")
    cfg = _classifier_data_cfg()
    net = train_classifier(cfg, FLAGS.attribute, steps=FLAGS.classifier_steps, seed=FLAGS.seed)
    path = save_classifier(net, cache_dir)
    print(f"wrote {path}: test accuracy {net.meta['test_accuracy']:.4f}")
    return
  if not FLAGS.workdir:
    raise config_lib.UserError("--workdir is required")
  if command == "ood":  # check the sets before the work
    for name in FLAGS.ood:
      if name not in OOD_SETS and not name.endswith(".npz"):
        raise config_lib.UserError(f"--ood: unknown set {name!r}; use one of "
                                   f"{', '.join(OOD_SETS)} or a path to an .npz of images")
  config, info, model, ema, step = sample_lib.load_for_sampling(FLAGS.workdir, FLAGS.step)
  if command == "quality":
    net = load_classifier(config.data, config.data.attribute, cache_dir)
    if FLAGS.eval_every:
      rows = chain_quality(config, model, ema, info, net, num=FLAGS.num, steps=FLAGS.steps,
                           eval_every=FLAGS.eval_every, seed=FLAGS.seed)
      result = {"along_chain": rows, "classifier_test_accuracy": net.meta["test_accuracy"]}
    else:
      result = quality(config, model, ema, info, net, num=FLAGS.num, steps=FLAGS.steps,
                       seed=FLAGS.seed)
  elif command == "accuracy":
    result = jem_accuracy(config, model, ema, FLAGS.num, seed=FLAGS.seed)
  elif command == "ood":
    result = ood(config, model, ema, info, list(FLAGS.ood), num=FLAGS.num, seed=FLAGS.seed)
    print(markdown_table(result))
  else:
    out = FLAGS.out or os.path.join(FLAGS.workdir, "export")
    x = generate_samples(config, model, ema, info, FLAGS.num, steps=FLAGS.steps,
                         seed=FLAGS.seed)
    export_samples(x, out)
    print(f"wrote {len(x)} PNG files and samples.npz to {out}")
    return
  _emit({"command": command, "workdir": FLAGS.workdir, "step": step, **result})


def export_samples(x: np.ndarray, out: str) -> None:
  """PNG files (one per sample) and samples.npz (uint8 NHWC under 'images'), the layouts that
  FID tools (torch-fidelity, pytorch-fid, clean-fid) read."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  os.makedirs(out, exist_ok=True)
  images = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
  for i, img in enumerate(images):
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
        os.path.join(out, f"{i:06d}.png"))
  np.savez_compressed(os.path.join(out, "samples.npz"), images=images)


def main(argv) -> None:
  from ebm_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  from ebm_jax import cli  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=cli.parse_flags)
