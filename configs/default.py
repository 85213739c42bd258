"""`--config=configs/default.py[:VARIANT]`: defined in ebm_jax/configs/default.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.default import get_config  # noqa: F401
