"""JEM (Grathwohl et al. 2020) on Fashion-MNIST: a 10-way classifier whose logsumexp is the
energy, trained with cross-entropy plus the project's generative loss (configs/regimes.py).
Variants as configs/fashion_mnist.py (`:cpu`, `:tiny`)."""

from ebm_jax.configs import fashion_mnist, regimes


def get_config(variant: str = ""):
  return fashion_mnist.get_config(variant, regime=regimes.apply_jem)
