"""IGEBM (Du & Mordatch 2019) on CIFAR-10: the predecessor's regime (configs/regimes.py)
on the CIFAR-10 net without multiscale heads; for side-by-side runs with configs/cifar10.py."""

from ebm_jax.configs import cifar10, regimes


def _igebm(c) -> None:
  regimes.apply_igebm(c)
  c.model.attention = False  # IGEBM's ResNet has no self-attention


def get_config(variant: str = ""):
  return cifar10.get_config(variant, regime=_igebm)
