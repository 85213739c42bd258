"""Evaluation of trained models, one module per evaluator:

  stats     Fréchet distance, class coverage, AUROC (pure numpy; refuse what they cannot score)
  features  the feature classifier: training, cache, features and predictions
  quality   sample quality of a run (Fréchet distance against its floor, coverage), along a
            chain, and the training loop's periodic quality hook
  ood       OOD sets (built in, or .npz files checked before use) and AUROC of −E
  jem       a JEM model's test accuracy

`python -m ebm_jax.evaluate` is the command-line layer over these.
"""
