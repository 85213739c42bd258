"""OOD detection (paper Table 3): the AUROC of the test split against each OOD set, scoring an
image by −E(x) (heads summed) under the EMA parameters; higher AUROC = OOD images get higher
energy. Sets: built in (OOD_SETS) or .npz files of images, each opened and checked (readable,
non-empty, numeric, finite, image-shaped, in range) before any model work."""

import os
import zipfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import data as data_lib
from ebm_jax.errors import UserError
from ebm_jax.eval import stats
from ebm_jax.restore import Run

OOD_SETS = ("uniform", "constant", "interpolation", "flip_v", "digits")


def check_images(arr, source: str) -> np.ndarray:
  """An array of images as uint8 (N, H, W, 1|3) levels: integers are taken as 0..255 levels,
  floats must lie in [0, 1]; NaN, infinities, empty or non-image arrays are refused with a
  message naming `source`."""
  arr = np.asarray(arr)
  if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise UserError(f"{source}: holds {arr.dtype} data, not numeric images")
  if arr.ndim == 3:
    arr = arr[..., None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or min(arr.shape[1:3]) < 2:
    raise UserError(f"{source}: expected images (N, H, W[, 1 or 3]), got shape {arr.shape}")
  if arr.shape[0] == 0:
    raise UserError(f"{source}: holds no images (shape {arr.shape})")
  if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
    if arr.min() < 0 or arr.max() > 255:
      raise UserError(f"{source}: integer images must hold levels 0..255, found "
                      f"{arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)
  if not np.isfinite(arr).all():
    raise UserError(f"{source}: {int((~np.isfinite(arr)).sum())} values are NaN or infinite")
  if arr.min() < 0 or arr.max() > 1:
    raise UserError(f"{source}: float images must lie in [0, 1], found "
                    f"{arr.min():.3g}..{arr.max():.3g} (integers are read as 0..255 levels)")
  return np.rint(arr * 255).astype(np.uint8)


def load_npz_images(path: str) -> np.ndarray:
  """The images of an .npz (key `images`, else `samples`, else its only array), checked."""
  if not os.path.isfile(path):
    raise UserError(f"--ood: no such file {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      if not f.files:
        raise UserError(f"--ood: {path} holds no arrays")
      key = "images" if "images" in f.files else ("samples" if "samples" in f.files
                                                  else f.files[0])
      arr = f[key]
  except UserError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"--ood: {path} is not a readable .npz file ({' '.join(str(e).split())})"
                    ) from e
  return check_images(arr, f"--ood: {path}[{key!r}]")


def fit_images(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Checked uint8 images -> float32 (N, H, W, C) in [0, 1] of the model's shape."""
  arr = data_lib.convert_channels(data_lib.resize_images(arr, shape[0]), shape[-1])
  return data_lib.to_unit(arr, 256)


def check_sets(sets: list[str]) -> None:
  """Names and files of OOD sets checked before any model work."""
  for name in sets:
    if name.endswith(".npz"):
      load_npz_images(name)
    elif name not in OOD_SETS:
      raise UserError(f"--ood: unknown set {name!r}; use one of {', '.join(OOD_SETS)} or a "
                      "path to an .npz of images")


def ood_images(name: str, shape: tuple[int, ...], test: np.ndarray, n: int,
               seed: int = 0) -> np.ndarray:
  """An OOD set of n images in [0, 1] with the model's shape: a name of OOD_SETS or a path to
  an .npz of images (uint8 levels, or floats in [0, 1]; NHW or NHWC; resized to the model)."""
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
    return fit_images(np.rint(digits).astype(np.uint8)[:n], shape)
  if name.endswith(".npz"):
    return fit_images(load_npz_images(name)[:n], shape)
  raise UserError(f"--ood: unknown set {name!r}; use one of {', '.join(OOD_SETS)} "
                  "or a path to an .npz of images")


def energy_scores(run: Run, images: np.ndarray, labels: np.ndarray | None = None,
                  batch: int = 250) -> np.ndarray:
  """-E(x) summed over heads under the run's EMA variables, (N,); unconditional models ignore
  labels."""
  energy = run.energy_fn()
  fn = jax.jit(lambda x, y: -energy(x, y))
  out = []
  for i in range(0, len(images), batch):
    y = None if labels is None else jnp.asarray(labels[i:i + batch])
    out.append(np.asarray(fn(jnp.asarray(images[i:i + batch], jnp.float32), y)))
  return np.concatenate(out)


def ood(run: Run, sets: list[str], *, num: int, seed: int = 0,
        on_set: Callable[[str, dict], None] | None = None) -> dict:
  """AUROC of the test split against each OOD set, scored by -E under EMA params. `on_set`
  receives each set's row as soon as it is computed (so a later failure loses nothing)."""
  settings, info = run.settings, run.info
  if len(info.shape) != 3:
    raise UserError("OOD detection needs an image model")
  check_sets(sets)
  test, labels = data_lib.test_images(settings.data, num, seed=seed)
  # JEM scores log p(x) = −E(x) = logsumexp f(x), with no label (as JEM's OOD results).
  y = labels if info.num_classes and not settings.model.jem else None
  s_in = energy_scores(run, test, y)
  if not np.isfinite(s_in).all():
    raise UserError("the model gives non-finite energies to test images: no AUROC to report")
  rows = {}
  for name in sets:
    if name == "digits" and settings.data.name == "digits":
      raise UserError("--ood=digits: the model was trained on digits")
    x_out = ood_images(name, tuple(info.shape), test, len(test), seed)
    y_out = None if y is None else y[:len(x_out)]
    s_out = energy_scores(run, x_out, y_out)
    if not np.isfinite(s_out).all():
      raise UserError(f"--ood={name}: the model gives non-finite energies to this set")
    rows[name] = {"auroc": stats.auroc(s_in, s_out), "num": int(len(x_out)),
                  "mean_energy": float(-s_out.mean())}
    if on_set is not None:
      on_set(name, rows[name])
  return {"in_distribution_mean_energy": float(-s_in.mean()), "num_in": int(len(test)),
          "sets": rows}


def markdown_table(result: dict) -> str:
  lines = ["| OOD set | AUROC |", "|---|---|"]
  lines += [f"| {k} | {v['auroc']:.3f} |" for k, v in result["sets"].items()]
  return "\n".join(lines)
