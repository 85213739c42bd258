"""Fashion-MNIST 28x28 grey from Debian's `dataset-fashion-mnist` IDX files (offline).
Variants: `:tiny` (tests), `:cpu` (2,000 small steps with a cosine learning-rate decay, for
measured runs on a CPU), `:elastic`
(elastic-deformation transitions at train and test time, critique §6.3).

  sudo apt-get install dataset-fashion-mnist   # or --config.data.path=/folder/with/idx/files
"""

from ebm_jax.configs import default, regimes


VARIANTS = ("cpu", "elastic")


def _cpu(c) -> None:
  """The measured CPU recipe (docs/fashion_mnist_recipe.md): default.apply_cpu's small net,
  chain and batch, with λ scaled to the image. The energy is a spatial mean, so ∇ₓE per pixel
  shrinks with the pixel count: digits' λ = 5 at 8×8 left 28×28 chains nearly still (E⁻ − E⁺
  ≈ 0.9, white backgrounds); λ = 60 (≈ 5 × 784 / 64) keeps E⁻ within 0.05 of E⁺."""
  c.langevin.step_size = 60.0
  c.loss.kl_samples = 0  # the whole (CPU-sized) batch
  # The test-time chain repeats the training chain: an augmentation, then K = 10 steps, eight
  # times, and K plain steps to end on. The default 10 × 20 + 40 steps ran past what the model
  # was trained against (Fréchet 182 at step 1,653, over-bright samples); 8 × 10 + 10 gave 44
  # on the same checkpoint (docs/fashion_mnist_recipe.md, rows 5).
  c.sample.num_blocks = 8
  c.sample.block_steps = c.langevin.num_steps
  c.sample.final_steps = c.langevin.num_steps
  c.train.num_steps = 2000
  # Adam's rate decays to 0 along a cosine over the 2,000 steps: Fréchet 25.4 against 51.6 at
  # a constant rate, same steps and chain (docs/fashion_mnist_recipe.md, row 8).
  c.optim.schedule = "cosine"
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
