"""`--config=configs/celeba_attributes.py[:VARIANT]`: defined in ebm_jax/configs/celeba_attributes.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.celeba_attributes import get_config  # noqa: F401
