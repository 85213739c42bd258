"""The training regimes the papers compare, as functions applied to a dataset's config (used by
configs/igebm_*.py, configs/true_cd.py, configs/jem_*.py and the `elastic` variants)."""


def _without_icd_tricks(c) -> None:
  """No KL term and no augmentation transitions, in training or at test time."""
  c.loss.opt = False
  c.loss.ent = False
  c.buffer.augment = False
  c.sample.augment = False


def apply_igebm(c, width: int | None = None) -> None:
  """IGEBM (Du & Mordatch 2019), as the reference description §7.4 reports its released code:
  its own net (models/igebm.py: no normalisation, leaky ReLU, spectral norm; `width` filters,
  None keeps model.features), Langevin gradient clipping 0.01, λ = 10, σ = 0.005, K = 60, FIFO
  replay of 10000 with 5 % noise restarts, CD + L2 energy regulariser only (no KL: every README
  command passes --zero_kl), no augmentation, its Adam (3e-4, β = (0, 0.999), per-element
  clip), single scale."""
  c.model.name = "igebm"
  if width is not None:
    c.model.features = width
  c.model.conv = "spectral"
  c.model.multiscale = False
  c.model.attention = False
  c.langevin.step_size = 10.0
  c.langevin.noise_scale = 0.005
  c.langevin.num_steps = 60
  c.langevin.grad_clip = 0.01
  c.buffer.kind = "fifo"
  c.buffer.capacity = 10_000
  c.buffer.noise_restart_prob = 0.05
  c.optim.learning_rate = 3e-4
  apply_igebm_optimizer(c)
  _without_icd_tricks(c)


def apply_igebm_optimizer(c) -> None:
  """IGEBM's optimiser (openai/ebm_code_release): train.py builds
  `AdamOptimizer(FLAGS.lr, beta1=0.0, beta2=0.999)` from its custom_adam.py, which clips each
  gradient element to 3·sqrt(v̂) + 0.1 before the Adam step; no global-norm clip."""
  c.optim.name = "igebm"
  c.optim.b1 = 0.0
  c.optim.b2 = 0.999
  c.optim.grad_clip_norm = 0.0


def apply_true_cd(c, data_prob: float = 0.1) -> None:
  """True contrastive divergence (critique §6.1): the buffer starts full of training images and
  every chain start is the data image with probability `data_prob`; none of the ICD tricks
  (no KL, no augmentation)."""
  c.buffer.init = "data"
  c.buffer.data_prob = data_prob
  c.buffer.noise_restart_prob = 0.0
  _without_icd_tricks(c)


def apply_short_run(c) -> None:
  """Short-run (non-persistent) chains: every chain starts from U(0, 1) noise at every step, K
  steps long; the buffer only feeds L_ent's comparison set."""
  c.buffer.init = "noise"
  c.buffer.data_prob = 0.0
  c.buffer.noise_restart_prob = 1.0
  _without_icd_tricks(c)


def apply_kl(c, form: str) -> None:
  """Both KL terms on, with the paper's sign or the 'right' one (critique §5.4.1)."""
  c.loss.opt = True
  c.loss.ent = True
  c.loss.kl_form = form


def apply_elastic(c, alpha: float = 8.0, sigma: float = 3.0, every: int = 100) -> None:
  """Elastic-deformation transitions (critique §6.3) for MNIST-like data, instead of the other
  augmentations: on every buffer draw in training, and every `every` Langevin steps at test
  time. alpha and sigma are dm-pix's displacement strength and smoothness in pixels of a
  28×28 image, scaled with data.image_size."""
  scale = c.data.image_size / 28
  c.augment.elastic_alpha = alpha * scale
  c.augment.elastic_sigma = sigma * scale
  c.augment.crop_scale = (1.0, 1.0)
  c.augment.crop_ratio = (1.0, 1.0)
  c.augment.flip = False
  c.augment.color_strength = 0.0
  c.augment.grayscale_prob = 0.0
  c.augment.blur_kernel = 0
  c.buffer.augment = True
  c.sample.augment = True
  c.sample.block_steps = every


def apply_jem(c) -> None:
  """JEM: class logits f(x), E(x) = −logsumexp f(x) trained with the project's sampler, buffer
  and generative loss, plus the cross-entropy of f on labelled data (single scale)."""
  c.model.jem = True
  c.model.multiscale = False
  c.data.attribute = "class"
