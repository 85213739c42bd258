"""`--config=configs/true_cd.py[:VARIANT]`: defined in ebm_jax/configs/true_cd.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.true_cd import get_config  # noqa: F401
