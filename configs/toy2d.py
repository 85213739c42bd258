"""`--config=configs/toy2d.py[:VARIANT]`: defined in ebm_jax/configs/toy2d.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.toy2d import get_config  # noqa: F401
