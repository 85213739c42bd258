"""JEM (Grathwohl et al. 2020) on CIFAR-10: the CIFAR-10 net, single scale, with 10 class
logits; E(x) = −logsumexp f(x) (configs/regimes.py)."""

from ebm_jax.configs import cifar10, regimes


def get_config(variant: str = ""):
  c = cifar10.get_config(variant)
  regimes.apply_jem(c)
  return c
