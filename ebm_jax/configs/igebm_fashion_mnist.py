"""IGEBM (Du & Mordatch 2019) on Fashion-MNIST (configs/regimes.py); `:cpu` for a CPU-sized
net and batch with the IGEBM sampler kept, `:tiny` for tests."""

from ebm_jax.configs import fashion_mnist, regimes


def get_config(variant: str = ""):
  return fashion_mnist.get_config(variant, regime=regimes.apply_igebm)
