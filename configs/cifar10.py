"""`--config=configs/cifar10.py[:VARIANT]`: defined in ebm_jax/configs/cifar10.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.cifar10 import get_config  # noqa: F401
