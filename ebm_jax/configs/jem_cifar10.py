"""JEM (Grathwohl et al. 2020) on CIFAR-10: the CIFAR-10 net, single scale, with 10 class
logits; E(x) = −logsumexp f(x) (configs/regimes.py)."""

from ebm_jax.configs import cifar10, regimes


def get_config(variant: str = ""):
  return cifar10.get_config(variant, regime=regimes.apply_jem)
