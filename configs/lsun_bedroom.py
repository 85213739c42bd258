"""`--config=configs/lsun_bedroom.py[:VARIANT]`: defined in ebm_jax/configs/lsun_bedroom.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.lsun_bedroom import get_config  # noqa: F401
