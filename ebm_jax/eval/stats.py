"""Scores of samples and detectors, pure numpy: the Fréchet distance of Gaussians fitted to
features, class coverage and AUROC. Each refuses input it cannot score (too few samples for a
covariance, non-finite values, empty sets) with a ValueError instead of returning a number."""

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of (N, D) features, in float64. Needs N > D samples: with fewer, the
  sample covariance is singular and the Fréchet distance computed from it is meaningless."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) == 0:
    raise ValueError(f"features must be (N, D) with N > 0, got shape {f.shape}")
  if not np.isfinite(f).all():
    raise ValueError("features contain NaN or infinite values (non-finite samples?)")
  if len(f) <= f.shape[1]:
    raise ValueError(f"{len(f)} samples cannot give a full-rank covariance of {f.shape[1]} "
                     f"features: use more than {f.shape[1]} samples")
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½), the Fréchet (2-Wasserstein²) distance of two
  Gaussians. tr (Σ₁Σ₂)^½ is Σᵢ √λᵢ over the eigenvalues of the symmetric PSD matrix
  Σ₁^½ Σ₂ Σ₁^½ (similar to Σ₁Σ₂), from two symmetric eigendecompositions: exact for singular
  covariances too (a feature that never fires), where a general matrix square root of Σ₁Σ₂
  warns "Matrix is singular" and needs a regulariser."""
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  w, v = scipy.linalg.eigh((sigma1 + sigma1.T) / 2)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = root1 @ sigma2 @ root1
  lam = scipy.linalg.eigvalsh((inner + inner.T) / 2)
  trace_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def class_coverage(predicted: np.ndarray, num_classes: int, min_share: float = 0.01) -> dict:
  """Entropy (nats; log(num_classes) when uniform) of the predicted-class histogram and the
  number of classes holding at least `min_share` of the predictions."""
  predicted = np.asarray(predicted)
  if predicted.size == 0:
    raise ValueError("no predictions to measure coverage on")
  counts = np.bincount(predicted, minlength=num_classes).astype(np.float64)
  p = counts / counts.sum()
  nz = p[p > 0]
  return {"entropy": float(-(nz * np.log(nz)).sum()), "max_entropy": float(np.log(num_classes)),
          "classes_present": int((p >= min_share).sum()), "num_classes": num_classes,
          "histogram": counts.astype(int).tolist()}


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
  """Area under the ROC curve for telling in-distribution (positive) from OOD by the score."""
  from sklearn.metrics import roc_auc_score  # pylint: disable=import-outside-toplevel
  s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
  if len(s_in) == 0 or len(s_out) == 0:
    raise ValueError("AUROC needs scores on both sets")
  if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
    raise ValueError("AUROC of non-finite scores (NaN or infinite energies) is meaningless")
  labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
  return float(roc_auc_score(labels, np.concatenate([s_in, s_out])))
