"""The quality curves of several runs in one figure (docs/fashion_mnist_recipe.md, row 7):

  python docs/figures/quality_curves.py OUT.png LABEL=WORKDIR [LABEL=WORKDIR ...]

Reads each workdir's metrics.jsonl (the quality/* rows the training-time hook wrote)."""

import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from ebm_jax.metrics import METRICS_FILE, read_jsonl  # pylint: disable=wrong-import-position

KEYS = (("quality/frechet", "Fréchet distance ↓"), ("quality/classes", "classes ≥ 1 %"),
        ("quality/mean_pixel", "mean pixel (data 0.27)"))


def main(out: str, runs: list[str]) -> None:
  fig, axes = plt.subplots(1, len(KEYS), figsize=(4 * len(KEYS), 3.2))
  for run in runs:
    label, _, workdir = run.partition("=")
    rows = [r for r in read_jsonl(os.path.join(workdir, METRICS_FILE)) if KEYS[0][0] in r]
    if not rows:
      raise SystemExit(f"error: no quality rows in {workdir}/{METRICS_FILE}")
    for ax, (key, title) in zip(axes, KEYS):
      ax.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", label=label)
      ax.set_title(title)
      ax.set_xlabel("training step")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=100)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
