"""IGEBM (Du & Mordatch 2019) on CIFAR-10: the predecessor's regime (configs/regimes.py) with
its ResNet32 (num_filters = 128, openai/ebm_code_release train.py); for side-by-side runs with
configs/cifar10.py; `:tiny` for tests."""

import functools

from ebm_jax.configs import cifar10, default, regimes


def get_config(variant: str = ""):
  tiny = "tiny" in default.parse_variant(variant)
  return cifar10.get_config(
      variant, regime=functools.partial(regimes.apply_igebm, width=None if tiny else 128))
