"""`--config=configs/digits.py[:VARIANT]`: defined in ebm_jax/configs/digits.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.digits import get_config  # noqa: F401
