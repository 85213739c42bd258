"""CIFAR-10 32x32, unconditional (paper A.2; the defaults are CIFAR-10's)."""

from ebm_jax.configs import default


def get_config(variant: str = "", regime: default.Edit | None = None):
  c = default.get_config()
  c.data.name = "cifar10"
  c.augment.blur_kernel = 5  # paper A.2 ("Gaussian blur of 5 pixels"); the code has no blur here
  return default.finish(c, variant, regime=regime)
