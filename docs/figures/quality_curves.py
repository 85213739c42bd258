"""The quality curves of several runs in one figure (docs/fashion_mnist_recipe.md, rows 7, 13):

  python docs/figures/quality_curves.py OUT.png LABEL=WORKDIR [LABEL=WORKDIR ...]

Reads each workdir's metrics.jsonl (the quality/* rows the training-time hook wrote). Where the
rows carry the hook's FID (`config.eval.fid`, on eval.fid_num samples: biased upwards against
the 10,000-sample figure, comparable only with itself) it is drawn against the training step
and against the training minutes (quality/train_minutes, the evaluations left out)."""

import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from ebm_jax.metrics import METRICS_FILE, read_jsonl  # pylint: disable=wrong-import-position

# (y key, x key, title, x label)
PANELS = (("quality/fid", "step", "FID (eval.fid_num samples) ↓", "training step"),
          ("quality/fid", "quality/train_minutes", "FID (eval.fid_num samples) ↓",
           "training minutes (evaluations left out)"),
          ("quality/frechet", "step", "own-classifier Fréchet ↓", "training step"),
          ("quality/classes", "step", "classes ≥ 1 %", "training step"),
          ("quality/mean_pixel", "step", "mean pixel (data 0.29)", "training step"))


def main(out: str, runs: list[str]) -> None:
  loaded = []
  for run in runs:
    label, _, workdir = run.partition("=")
    rows = [r for r in read_jsonl(os.path.join(workdir, METRICS_FILE))
            if any(k.startswith("quality/") for k in r)]
    if not rows:
      raise SystemExit(f"error: no quality rows in {workdir}/{METRICS_FILE}")
    loaded.append((label, rows))
  panels = [p for p in PANELS if any(p[0] in r and p[1] in r for _, rows in loaded for r in rows)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
  for label, rows in loaded:
    for ax, (key, x_key, title, x_label) in zip(axes[0], panels):
      pts = [(r[x_key], r[key]) for r in rows if key in r and x_key in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
      ax.set_title(title)
      ax.set_xlabel(x_label)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=100)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
