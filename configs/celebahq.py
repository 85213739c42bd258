"""`--config=configs/celebahq.py[:VARIANT]`: defined in ebm_jax/configs/celebahq.py (its docstring
lists the variants), inside the package, so this file loads from any working directory."""

from ebm_jax.configs.celebahq import get_config  # noqa: F401
