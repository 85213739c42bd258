"""Are the samples copies? Each sample beside its nearest training images in pixel space.

`evaluate neighbours` draws a few samples by the run's test-time chain (EMA parameters),
finds the k training images nearest to each in L2 distance over pixels (the whole training
split by default), and writes one grid: a row per sample, the sample first, then its
neighbours, nearest first. As a yardstick it also reports the same distance for as many held-out
test images: a model that copies its training set puts its samples much nearer to a training
image than a held-out image of the same data lies.
"""

import numpy as np

from ebm_jax import data as data_lib
from ebm_jax import images
from ebm_jax.errors import UserError
from ebm_jax.eval import quality
from ebm_jax.restore import Run


def nearest(queries: np.ndarray, refs: np.ndarray, k: int,
            chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """(indices, distances), each (len(queries), k): the k rows of refs nearest to each query in
  L2 distance over all their values, nearest first. Distances are exact (recomputed from the
  differences of the chosen rows); the search runs over chunks of refs."""
  q, r = np.asarray(queries, np.float64), np.asarray(refs, np.float32)
  q, r = q.reshape(len(q), int(np.prod(q.shape[1:]))), r.reshape(len(r), int(np.prod(r.shape[1:])))
  if not len(q) or not len(r):
    raise UserError(f"nearest: needs queries and references (got {len(q)} and {len(r)})")
  if q.shape[1] != r.shape[1]:
    raise UserError(f"nearest: queries of {q.shape[1]} values against references of "
                    f"{r.shape[1]}")
  if not 1 <= k <= len(r):
    raise UserError(f"nearest: k={k} must lie in 1..{len(r)} (the references)")
  if not (np.isfinite(q).all() and np.isfinite(r).all()):
    raise UserError("nearest: the images hold NaN or infinite values")
  best_d = np.full((len(q), 0), np.inf)
  best_i = np.zeros((len(q), 0), np.int64)
  qq = (q ** 2).sum(1, keepdims=True)
  for start in range(0, len(r), chunk):
    block = r[start:start + chunk].astype(np.float64)
    d2 = qq + (block ** 2).sum(1)[None] - 2.0 * q @ block.T  # squared distances, a screen
    take = min(k, block.shape[0])
    part = np.argpartition(d2, take - 1, axis=1)[:, :take]
    best_d = np.concatenate([best_d, np.take_along_axis(d2, part, 1)], 1)
    best_i = np.concatenate([best_i, part + start], 1)
    keep = np.argsort(best_d, axis=1, kind="stable")[:, :k]
    best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
  # exact distances of the chosen rows (the expansion above loses digits near 0), re-ranked
  exact = np.sqrt(((q[:, None, :] - r[best_i].astype(np.float64)) ** 2).sum(-1))
  order = np.argsort(exact, axis=1, kind="stable")
  return np.take_along_axis(best_i, order, 1), np.take_along_axis(exact, order, 1)


def neighbours(run: Run, *, num: int, k: int, steps: int | None, seed: int,
               train_num: int | None, out_png: str, batch_size: int | None = None) -> dict:
  """Draws `num` samples, writes the sample | k-nearest-training-images grid to out_png and
  returns the distances, with the same for `num` test images as the yardstick."""
  data = run.settings.data
  if num < 1 or k < 1:
    raise UserError(f"neighbours: --num={num} and --neighbours={k} must be >= 1")
  samples = np.asarray(quality.generate_samples(run, num, steps=steps, seed=seed,
                                                batch_size=batch_size), np.float32)
  if not train_num:  # the whole training split
    train_num = data_lib.get_info(data_lib.as_settings(data, split="train")).num_examples
    if train_num < 1:
      raise UserError("neighbours: the training split's size is unknown here; give --train_num")
  train_x, _ = data_lib.split_images(data, train_num, split="train", seed=seed)
  test_x, _ = data_lib.test_images(data, num, seed=seed)
  idx, dist = nearest(samples, train_x, k)
  _, test_dist = nearest(test_x, train_x, 1)
  rows = np.concatenate([samples[:, None], train_x[idx]], 1)  # (num, 1 + k, H, W, C)
  grid = images.make_grid(rows.reshape(-1, *samples.shape[1:]), ncol=k + 1)
  images.save_png(grid, out_png, scale=max(1, 96 // samples.shape[1]))
  pixels = float(np.prod(samples.shape[1:]))
  return {"num_samples": num, "neighbours": k, "num_train": int(len(train_x)),
          "grid": out_png,
          "sample_nearest_l2": [float(d) for d in dist[:, 0]],
          "sample_nearest_l2_median": float(np.median(dist[:, 0])),
          "test_nearest_l2_median": float(np.median(test_dist[:, 0])),
          "rms_pixel_difference_to_nearest": float(np.median(dist[:, 0]) / np.sqrt(pixels))}
