"""ebm_jax: Improved Contrastive Divergence training of energy-based models in JAX."""
