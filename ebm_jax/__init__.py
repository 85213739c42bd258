"""ebm_jax: Improved Contrastive Divergence training of energy-based models in JAX/Flax.

`ebm_jax.load(workdir)` restores a trained run for sampling (see ebm_jax/api.py). It is
imported on first use, so that `import ebm_jax.errors` and the like stay light and the package
itself imports none of its modules.
"""

import importlib


def __getattr__(name: str):
  if name in ("load", "Run"):
    return getattr(importlib.import_module("ebm_jax.api"), name)
  raise AttributeError(f"module 'ebm_jax' has no attribute {name!r}")
