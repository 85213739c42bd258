"""MNIST 28x28 grey, unconditional, the reference's MNISTModel (ref §3.4). The authors never
published MNIST hyper-parameters (their issue #17); these are the CIFAR-10 ones with the
augmentations that make sense for digits (no flip, no colour)."""

from ebm_jax.configs import default, fashion_mnist, regimes

VARIANTS = ("elastic",)  # elastic-deformation transitions at train and test time (critique §6.3)


def get_config(variant: str = ""):
  c = default.get_config()
  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.model.name = "mnist"
  c.model.features = 64  # the MNISTModel width of the performance anchor
  c.model.multiscale = False  # MNISTModel is single-scale (ref §3.4)
  c.model.attention = False
  c.loss.kl_samples = 32  # ref §1.4 (n = 32 on mnist)
  c.augment.flip = False  # a mirrored digit is another symbol
  c.augment.color_strength = 0.0  # grey images
  c.augment.grayscale_prob = 0.0
  c.augment.crop_scale = (0.7, 1.0)  # mild: small crops lose the digit
  c.augment.blur_kernel = 0
  tokens = default.parse_variant(variant, VARIANTS)
  if "elastic" in tokens:
    regimes.apply_elastic(c)
  return default.finish(c, variant, VARIANTS, tiny=fashion_mnist.tiny_kl)
