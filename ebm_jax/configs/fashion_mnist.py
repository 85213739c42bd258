"""Fashion-MNIST 28x28 grey from Debian's `dataset-fashion-mnist` IDX files (offline).
Variants: `:tiny` (tests), `:cpu` (2,800 steps of an F = 24 net with a cosine learning-rate
decay, for measured runs on a CPU), `:elastic`
(elastic-deformation transitions at train and test time, critique §6.3).

  sudo apt-get install dataset-fashion-mnist   # or --config.data.path=/folder/with/idx/files
"""

from ebm_jax.configs import default, regimes


VARIANTS = ("cpu", "elastic")


def _cpu(c) -> None:
  """The measured CPU recipe (docs/fashion_mnist_recipe.md) on top of default.apply_cpu (K = 10,
  cosine decay, test chain 8 × (augmentation + 10) + 10): width F = 24, λ = 60 as measured
  (default.cpu_step_size's rule gives 61) and 2,800 steps, sized to train within an hour on a
  2-core CPU. The digits value λ = 5 left 28×28 chains nearly still (E⁻ − E⁺ ≈ 0.9, white
  backgrounds); λ = 60 keeps E⁻ within 0.05 of E⁺."""
  c.model.features = 24  # standard FID 35.8 at F = 16, 25.4 at F = 24 (rows 9, 13)
  c.langevin.step_size = 60.0
  c.loss.kl_samples = 0  # the whole (CPU-sized) batch
  c.train.num_steps = 2800  # the cosine decay spans these steps (row 15)
  c.train.log_grad_terms_every = 500


def tiny_kl(c) -> None:
  c.loss.kl_samples = 4


def get_config(variant: str = "", regime: default.Edit | None = None):
  """Fashion-MNIST with `variant`; `regime` (configs/regimes.py) for the configs built on it."""
  c = default.get_config()
  c.data.name = "fashion_mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.model.name = "mnist"
  c.model.features = 32
  c.model.multiscale = False
  c.model.attention = False
  c.langevin.num_steps = 40  # paper A.2 (as CIFAR-10)
  c.loss.kl_samples = 32  # ref §1.4 (n = 32 on mnist)
  c.augment.flip = True  # clothes are left-right symmetric enough
  c.augment.color_strength = 0.0  # grey images
  c.augment.grayscale_prob = 0.0
  c.augment.crop_scale = (0.5, 1.0)
  c.augment.blur_kernel = 0
  c.train.batch_size = 64
  c.train.num_steps = 20_000
  c.train.eval_every = 1000  # quality/* of EMA samples (the :cpu variant: every 500 steps)
  if "elastic" in default.parse_variant(variant, VARIANTS):
    regimes.apply_elastic(c)  # critique §6.3: elastic deformations instead of crops and flips
  return default.finish(c, variant, VARIANTS, regime=regime, cpu=_cpu, tiny=tiny_kl)
