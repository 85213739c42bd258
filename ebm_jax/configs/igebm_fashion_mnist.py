"""IGEBM (Du & Mordatch 2019) on Fashion-MNIST (configs/regimes.py); `:cpu` for a CPU-sized
net and batch with the IGEBM sampler kept, `:tiny` for tests."""

from ebm_jax.configs import default, fashion_mnist, regimes


def get_config(variant: str = ""):
  c = fashion_mnist.get_config(variant)
  regimes.apply_igebm(c)
  if "tiny" in default.parse_variant(variant, fashion_mnist.VARIANTS):
    default.apply_tiny(c)  # the IGEBM chain and buffer sizes back to test size
  return c
