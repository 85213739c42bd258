"""`--config=configs/fashion_mnist.py[:VARIANT]`: defined in ebm_jax/configs/fashion_mnist.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.fashion_mnist import get_config  # noqa: F401
