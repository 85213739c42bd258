"""IGEBM (Du & Mordatch 2019) on Fashion-MNIST (configs/regimes.py): its MnistNet with
num_filters = 64 (openai/ebm_code_release train.py's default); `:cpu` for a CPU-sized net and
batch with the IGEBM sampler kept, `:tiny` for tests."""

import functools

from ebm_jax.configs import default, fashion_mnist, regimes


def get_config(variant: str = ""):
  small = {"cpu", "tiny"} & set(default.parse_variant(variant, fashion_mnist.VARIANTS))
  regime = functools.partial(regimes.apply_igebm, width=None if small else 64)
  return fashion_mnist.get_config(variant, regime=regime)
