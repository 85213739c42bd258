"""Image files of samples: grids, PNGs, scatter plots of 2-D samples, per-image exports."""

import math
import os

import numpy as np

from ebm_jax import files


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
  """(N, H, W, C) in [0, 1] -> one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def save_png(grid: np.ndarray, path: str, scale: int = 1) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  img = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  if img.shape[-1] == 1:
    img = img[..., 0]
  pil = Image.fromarray(img)
  if scale > 1:
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
  pil.save(path)


def save_scatter(points: np.ndarray, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
  ax.set_aspect("equal")
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def save_samples(x: np.ndarray, outdir: str, name: str, **arrays) -> str:
  """NAME.png (a grid of images, or a scatter plot of 2-D points) and NAME.npz (`samples` and
  any further arrays) in outdir; returns the PNG's path."""
  files.make_dirs(outdir)
  png = os.path.join(outdir, f"{name}.png")
  if x.ndim == 4:
    save_png(make_grid(x), png, scale=max(1, 128 // x.shape[1]))
  else:
    save_scatter(x, png)
  np.savez_compressed(os.path.join(outdir, f"{name}.npz"), samples=x, **arrays)
  return png


def export_samples(x: np.ndarray, out: str) -> None:
  """PNG files (one per sample) and samples.npz (uint8 NHWC under 'images'), the layouts that
  FID tools (torch-fidelity, pytorch-fid, clean-fid) read."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  files.make_dirs(out)
  images = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
  for i, img in enumerate(images):
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
        os.path.join(out, f"{i:06d}.png"))
  np.savez_compressed(os.path.join(out, "samples.npz"), images=images)
