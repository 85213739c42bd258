"""IGEBM (Du & Mordatch 2019) on CIFAR-10: the predecessor's regime (configs/regimes.py)
on the CIFAR-10 net without multiscale heads; for side-by-side runs with configs/cifar10.py."""

from ebm_jax.configs import cifar10, default, regimes


def get_config(variant: str = ""):
  c = cifar10.get_config(variant)
  regimes.apply_igebm(c)
  c.model.attention = False  # IGEBM's ResNet has no self-attention
  if "tiny" in default.parse_variant(variant):
    default.apply_tiny(c)  # the IGEBM chain and buffer sizes back to test size
  return c
