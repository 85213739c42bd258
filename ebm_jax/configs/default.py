"""Every configuration field of ebm_jax, with its default and where the value comes from.

Dataset configs import this file and override a few fields. Sources are abbreviated:
  paper §x / A.x  -> Du et al., "Improved Contrastive Divergence Training of Energy-Based Models",
                     ICML 2021, arXiv:2012.01316
  ref §x          -> the authors' PyTorch code (yilundu/improved_contrastive_divergence), as
                     summarised section by section in docs/reference.md
  critique §x     -> "Clarifying MCMC-based training of modern EBMs: Contrastive Divergence versus
                     Maximum Likelihood" (anonymous ICML submission; no arXiv id)
Where the paper and the code differ the paper's value is used and the code's value is noted.

Variants: `get_config("tiny")` shrinks everything so a step runs in seconds on a CPU (tests,
smoke runs). Command line: `--config=configs/default.py:tiny`.
"""

from typing import Callable

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # base PRNG seed; per-step keys are fold_in(seed key, step) (docs/algorithm.md)

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  # One of: digits, fashion_mnist, shapes, toy2d (offline); cifar10, celeba_hq, lsun_bedroom,
  # mnist, celeba (tensorflow-datasets).
  c.data.name = "cifar10"
  c.data.image_size = 32  # images are resized/cropped to image_size x image_size
  c.data.channels = 3  # 1 (grey) or 3 (RGB); grey datasets read as RGB are averaged, and back
  c.data.path = ""  # offline files (fashion_mnist IDX folder) or tfds data_dir; "" = default
  c.data.split = "train"
  # The label that conditions the model through FiLM (ref §3.1): "" = unconditional, "class" for
  # class-labelled sets, a CelebA attribute name (Young, Male, Smiling, ...) or a shapes attribute.
  c.data.attribute = ""
  c.data.toy_density = "8gaussians"  # toy2d: 8gaussians, rings, checkerboard, two_moons, ...
  c.data.download = True  # tfds: download and prepare missing data; False = stop with how to fix it
  c.data.shuffle_buffer = 10_000  # tf.data shuffle buffer (examples)

  # ---------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  # resnet32 (paper Fig. 11a / ref §3.2), resnet128 (Fig. 11b / ref §3.3), mnist (ref §3.4),
  # mlp (2-D energies).
  c.model.name = "resnet32"
  c.model.features = 64  # F, base width; paper Fig. 11a (CIFAR-10) uses 64, Fig. 11b uses 128
  c.model.multiscale = True  # energies at full, 1/2 and 1/4 resolution -> (B, 3); paper §2.4, A.1
  # How the 1/2 and 1/4 heads are cut from the full net: "code" keeps the first levels (ref
  # §3.2-3.3; the reference's 6.6 M / 27 M parameters), "paper" drops them (A.1 read literally).
  c.model.multiscale_layout = "code"
  c.model.attention = True  # SAGAN self-attention block; paper §3.1 ("we add self-attention")
  # Normalisation inside residual blocks: "instance_group" = InstanceNorm up to 128 channels and
  # GroupNorm(32) above (ref §3.1), "layer", or "none".
  c.model.norm = "instance_group"
  # Weight standardisation of the block convs (ref §3.1 WSConv2d) or spectral norm (IGEBM).
  # Paper §3.1 removes spectral norm; the code standardises weights instead.
  c.model.conv = "ws"  # "ws", "spectral" or "plain"
  c.model.mlp_hidden = (256, 256, 256)  # mlp only: hidden widths
  c.model.dtype = "float32"  # compute dtype of the net ("bfloat16" for mixed precision)
  # JEM (Grathwohl et al. 2020, arXiv:1912.03263): the net's last layer gives class logits
  # f(x); E(x, y) = -f(x)[y], E(x) = -logsumexp f(x). Trained with cross-entropy (loss.ce_weight)
  # plus the generative loss on E(x). Needs labelled data (data.attribute) and a single scale.
  c.model.jem = False

  # ---------------------------------------------------------------- Langevin sampler
  c.langevin = ml_collections.ConfigDict()
  c.langevin.num_steps = 40  # K; paper A.2 (CIFAR-10, CelebA, LSUN)
  c.langevin.step_size = 100.0  # lambda; paper A.2 (CIFAR-10: 100, CelebA/LSUN: 1000)
  c.langevin.noise_scale = 0.001  # sigma; paper A.2 ("Gaussian noise of magnitude 0.001")
  c.langevin.anneal_noise = False  # sigma_k = sigma (K-k)/K; ref §1.3 `anneal`, off by default
  c.langevin.grad_clip = 0.0  # elementwise clip of grad_x E (IGEBM proj_norm 0.01); 0 = off, paper §3.1
  # "ula": the reference's unadjusted step; "mala": Metropolis-adjusted (critique §2.3), exact
  # for exp(-E/T) with T = noise_scale^2 / (2 step_size); acceptance rate in the metrics.
  # "hmc": Hamiltonian Monte Carlo on the same target, leapfrog_steps steps of size sigma per
  # proposal (blackjax), leapfrog_steps + 1 gradients per step.
  c.langevin.sampler = "ula"
  c.langevin.leapfrog_steps = 5  # hmc only
  c.langevin.clip_x = True  # clamp samples to [0, 1] after each step (ref §1.3); False for 2-D data
  # Chain steps unrolled per lax.scan iteration when the chain runs inside the step program
  # (host_segment below resolves to 0): the same computation (equal up to float rounding).
  # 0 = auto: the whole chain on CPU (XLA:CPU runs unrolled steps ~2x faster,
  # benchmarks/README.md; compile time grows with K), a rolled loop on GPU/TPU.
  c.langevin.unroll = 0
  # Langevin steps per host-dispatched chain program in training (ebm_jax/chain_program.py): the
  # step then runs as a start program, K/S calls of one straight-line S-step program and a
  # finishing program, with the same result. -1 = auto: on CPU segments of 10 when K > 10
  # (XLA:CPU runs the chain ~2x slower in a loop, and a fully unrolled K = 40 chain compiles
  # for minutes), else the chain inside the step; 0 on GPU/TPU. 0 = the chain inside the one
  # step program, rolled or unrolled per langevin.unroll.
  c.langevin.host_segment = -1

  # ---------------------------------------------------------------- losses
  c.loss = ml_collections.ConfigDict()
  c.loss.cd = True  # L_CD = mean E(x+) - mean E(sg(x-)); paper Eq. 4
  c.loss.reg_weight = 1.0  # alpha in alpha (E(x+)^2 + E(x-)^2); ref §1.5 (hard-coded 1), paper §3.1
  c.loss.opt = True  # L_opt = E_{sg(theta)}(x_hat); paper Eq. 6 (first half of L_KL)
  c.loss.opt_weight = 1.0  # kl_coeff; ref §1.5 (the paper gives no value)
  c.loss.ent = True  # L_ent = -mean log NN(x_hat, buffer); paper Eq. 7 (second half of L_KL)
  c.loss.ent_weight = 0.3  # ref §1.5 ("just a heuristic": the authors, yilundu/improved_contrastive_divergence issue #9); paper silent
  c.loss.ent_num_refs = 100  # comparison set size; ref §1.5 uses 100 (paper §2.2 says 1000)
  c.loss.ent_min_buffer = 1000  # L_ent only once the buffer holds more items; ref §1.5
  c.loss.ent_eps = 1e-8  # added inside the sqrt of the NN distance; ref §8.4 (the code has none)
  c.loss.kl_samples = 0  # n, rows that carry L_KL; 0 = whole batch (ref §1.4: n = B on CIFAR/CelebA)
  # "paper": L_KL as above; "right": its negation, -(L_opt + L_ent), which maximises the KL
  # divergence as CD's derivation asks (critique §4.2, §5.4.1; it finds the paper's sign flipped).
  c.loss.kl_form = "paper"
  c.loss.ce_weight = 1.0  # JEM only (model.jem): weight of the classifier's cross-entropy
  c.loss.kl_all_steps = False  # differentiate L_opt through all K steps (paper A.4 ablation)
  # The loss and its θ-gradient summed over this many equal chunks of each device's rows, one
  # after another (chunks.value_and_grad): every term is a mean over rows, so the result
  # is the same within float rounding, with the same FLOPs and the loss's activation memory
  # divided by about this number (benchmarks/README.md, "Memory"). 1 = the whole batch at once.
  c.loss.chunks = 1

  # ---------------------------------------------------------------- replay buffer
  c.buffer = ml_collections.ConfigDict()
  c.buffer.kind = "reservoir"  # "reservoir" (Algorithm R, paper §2.5) or "fifo" (IGEBM)
  c.buffer.capacity = 10_000  # paper §3.1 ("buffer size of 10000")
  c.buffer.storage = "uint8"  # "uint8" (ref §1.2, 8-bit images) or "float32" (2-D data)
  c.buffer.noise_restart_prob = 0.05  # paper §3.1 / Alg. 1 (5 %); the code now uses 0.001
  c.buffer.noise_range = (0.0, 1.0)  # chain restarts are U(lo, hi) noise; images: U(0, 1) (ref §1.2)
  # True contrastive divergence (critique §6.1): "data" fills the buffer with training images
  # before the first step; data_prob is the chance that a chain start is the current data
  # image instead of a buffer draw (critique: 10 %). "noise": the paper's empty buffer.
  c.buffer.init = "noise"
  c.buffer.data_prob = 0.0
  c.buffer.augment = True  # one augmentation transition per chain start drawn from the buffer; paper §2.3
  # One buffer per device (capacity items each) and one set of ent_num_refs references per
  # device, as the authors' 8-process CelebA-HQ / LSUN runs had; False: one shared buffer.
  c.buffer.per_device = False

  # ---------------------------------------------------------------- augmentation transitions
  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale = (0.3, 1.0)  # random resized crop area range; paper A.2 ("between 0.3 and 1.0")
  c.augment.crop_ratio = (0.75, 4.0 / 3.0)  # aspect ratio range; torchvision default (ref §2.1)
  c.augment.flip = True  # horizontal flip with p = 0.5; paper A.2, ref §2.1
  c.augment.color_strength = 1.0  # SimCLR colour jitter strength s; paper A.2 (CIFAR 1.0, CelebA 0.5)
  c.augment.color_prob = 0.8  # jitter applied with p = 0.8; SimCLR (Chen et al. 2020), ref §2.1
  c.augment.hue_scale = 0.2  # max hue shift = hue_scale * s; SimCLR uses 0.2 (the code uses 0.4)
  c.augment.grayscale_prob = 0.2  # SimCLR, ref §2.1
  c.augment.blur_kernel = 5  # Gaussian blur kernel in pixels, 0 = off; paper A.2 (CIFAR 5, CelebA 11)
  c.augment.blur_prob = 0.5  # ref §2.1 (utils.GaussianBlur)
  c.augment.blur_sigma = (0.1, 2.0)  # sigma ~ U(0.1, 2); ref §2.1
  c.augment.elastic_alpha = 0.0  # elastic deformation strength in pixels, 0 = off; critique §6.3
  c.augment.elastic_sigma = 3.0  # smoothness of the elastic displacement field (pixels)

  # ---------------------------------------------------------------- optimiser
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # 'adam' (ref §4) or 'igebm' (IGEBM's per-element update clip)
  c.optim.learning_rate = 2e-4  # ref §4 (paper: Adam, no value)
  # ref §4; 'cosine' decays to final_lr_fraction over train.num_steps (raising num_steps to
  # extend a finished run lifts the rate again: the decay is recomputed over the new length)
  c.optim.schedule = "constant"
  c.optim.final_lr_fraction = 0.0  # cosine only
  c.optim.b1 = 0.0  # ref §4 (no momentum)
  c.optim.b2 = 0.9  # ref §4
  c.optim.eps = 1e-8  # ref §4
  c.optim.grad_clip_norm = 0.5  # global-norm clip; ref §4 (0 = off)
  c.optim.ema_decay = 0.999  # paper §3.1 ("EMA weight of 0.999"); the code uses 0.99
  # Decay warm-up min(ema_decay, (1 + t)/(10 + t)) (step.ema_decay): without it the EMA keeps
  # ema_decay^t of the initial weights (37 % after 1,000 steps at 0.999).
  c.optim.ema_warmup = False

  # ---------------------------------------------------------------- training loop
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global batch B; ref §4 (per GPU)
  c.train.num_steps = 100_000  # the code never stops; the author trained 10k-120k (ref §4)
  c.train.log_every = 50  # scalars to TensorBoard + metrics.jsonl
  c.train.image_every = 1000  # grid of negatives to TensorBoard
  # Gradient norm of each loss term and cos(grad L_KL, grad L_CD), global and per layer (paper
  # Fig. 12), computed by a jitted function of its own at these steps; 0 = never.
  c.train.log_grad_terms_every = 0
  # Sample quality during training: every eval_every steps, eval.num samples from the EMA
  # parameters by the test-time chain (config.sample), logged as quality/* (0 = off).
  c.train.eval_every = 0
  c.train.checkpoint_every = 1000  # ref §4 save_interval
  c.train.keep_checkpoints = 2  # latest checkpoints kept ...
  c.train.keep_every = 10_000  # ... plus a permanent one every keep_every steps (0 = none)

  # ---------------------------------------------------------------- quality during training
  c.eval = ml_collections.ConfigDict()
  # Samples per evaluation: more than the feature classifier's 128 features, so that the
  # Fréchet distance is computed from a full-rank covariance.
  c.eval.num = 256
  c.eval.classifier_steps = 1500  # the feature classifier, trained once per dataset and cached
  # The standard FID (eval/fid.py) of eval.fid_num EMA samples against the test split at every
  # evaluation: off by default, since on a CPU 10,000 samples and their Inception features take
  # many minutes. A smaller fid_num is reported as quality/fid_num (not comparable to papers').
  c.eval.fid = False
  c.eval.fid_num = 10_000

  # ---------------------------------------------------------------- divergence guard
  # Checked on device every step; on a trip the loop rolls back to the last good checkpoint and
  # continues with a new key stream (ref §4 instead aborts when |mean E(x+)| > 10 or NaN).
  c.guard = ml_collections.ConfigDict()
  c.guard.enabled = True  # False: a trip stops the run at once (exit code 3), no rollback
  c.guard.max_abs_energy = 1e4  # bound on |mean E(x+)|; the reference aborts above 10 (ref §4)
  c.guard.max_energy_gap = 1e4  # bound on |mean E(x+) - mean E(x-)| (paper Fig. 9: divergence)
  c.guard.patience = 1  # consecutive steps beyond a bound before the guard trips (NaN: at once)
  c.guard.max_recoveries = 3  # rollbacks allowed within `window` steps before giving up
  c.guard.window = 10_000  # steps
  c.guard.lr_factor = 1.0  # learning rate multiplied by this at each rollback (1 = unchanged)

  # ---------------------------------------------------------------- fault injection (tests)
  c.debug = ml_collections.ConfigDict()
  c.debug.inject_nan_at_step = 0  # step whose data batch is replaced by inject_value (0 = never)
  c.debug.inject_nan_times = 1  # ... while fewer than this many rollbacks have happened
  c.debug.inject_value = float("nan")  # NaN: a non-finite trip; e.g. 1e6: an energy-bound trip
  c.debug.signal_at_step = 0  # after dispatching this step, the process signals itself (0 = never)
  c.debug.signal = "TERM"  # TERM, INT or KILL
  c.debug.signal_process = -1  # the process that signals itself (-1 = every process)
  c.debug.kill_in_save_at_step = 0  # SIGKILL inside this step's checkpoint write (0 = never)

  # ---------------------------------------------------------------- test-time sampling
  c.sample = ml_collections.ConfigDict()
  c.sample.num = 64  # chains
  c.sample.batch_size = 64  # chains run at once
  c.sample.step_size = -1.0  # lambda at test time; < 0 = langevin.step_size
  c.sample.num_blocks = 10  # blocks of block_steps Langevin steps, each followed by an augmentation
  c.sample.block_steps = 20  # paper §2.3 ("after every 20 steps")
  c.sample.final_steps = 40  # plain steps at the end, no augmentation
  c.sample.augment = True  # augmentation transitions between blocks; paper §2.3

  return finish(c, variant)


def parse_variant(variant: str, known: tuple[str, ...] = ()) -> list[str]:
  """'a,tiny' -> ['a', 'tiny']; rejects tokens that are neither 'tiny' nor in `known`."""
  tokens = [t.strip() for t in variant.split(",") if t.strip()]
  for t in tokens:
    if t != "tiny" and t not in known:
      raise ValueError(f"unknown config variant {t!r}; known: {['tiny', *known]}")
  return tokens


Edit = Callable[[ml_collections.ConfigDict], None]


def finish(c: ml_collections.ConfigDict, variant: str, known: tuple[str, ...] = (), *,
           regime: Edit | None = None, cpu: Edit | None = None,
           tiny: Edit | None = None) -> ml_collections.ConfigDict:
  """The one place where variants meet, in this order, after the dataset's own fields:
  'cpu' (apply_cpu, then the dataset's `cpu` edit; only where `known` lists it), the training
  regime (IGEBM, true CD, JEM, ...: its defining settings win over 'cpu'), then 'tiny'
  (apply_tiny, then the dataset's `tiny` edit) last, so a tiny run is tiny whatever came
  before. Returns c."""
  tokens = parse_variant(variant, known)
  if "cpu" in tokens:
    apply_cpu(c)
    if cpu:
      cpu(c)
  if regime:
    regime(c)
  if "tiny" in tokens:
    apply_tiny(c)
    if tiny:
      tiny(c)
  return c


def cpu_step_size(image_size: int) -> float:
  """λ for the `:cpu` recipe at image_size × image_size: 5 × pixels / 64. The energy is a spatial
  mean, so ∇ₓE per pixel shrinks with the pixel count and λ must grow with it to move a pixel
  as far per step. Measured at both ends: λ = 5 at 8×8 (digits), λ = 60 at 28×28 (Fashion-MNIST;
  the rule gives 61; λ = 5 there left the chains nearly still: docs/fashion_mnist_recipe.md)."""
  return 5.0 * image_size * image_size / 64


def apply_cpu(c: ml_collections.ConfigDict) -> None:
  """A run that fits a CPU (minutes, not days): the digits quickstart's measured
  settings (F=16, K=10, Adam 1e-3, EMA 0.99, B=32) for 1,500 steps, with what the Fashion-MNIST
  recipe measured (docs/fashion_mnist_recipe.md): λ scaled with the pixel count
  (cpu_step_size), a cosine decay of the learning rate, and a test-time chain that repeats the
  training chain (8 × (augmentation + K steps) + K steps). Reads c.data.image_size: set the
  image size before finish()."""
  c.model.features = 16
  c.langevin.num_steps = 10
  c.langevin.step_size = cpu_step_size(c.data.image_size)
  c.buffer.capacity = 5000
  c.loss.ent_min_buffer = 500
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "cosine"  # Fashion-MNIST: Fréchet 25.4 against 51.6 at a constant rate
  c.optim.ema_decay = 0.99
  c.train.batch_size = 32
  c.train.num_steps = 1500
  c.train.log_every = 100
  c.train.log_grad_terms_every = 100
  c.train.image_every = 500
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.keep_every = 0
  # The test-time chain the model was trained against: the paper's 10 × 20 + 40 steps ran past
  # it at K = 10 (Fashion-MNIST: Fréchet 182 against 44 on one checkpoint).
  c.sample.num_blocks = 8
  c.sample.block_steps = c.langevin.num_steps
  c.sample.final_steps = c.langevin.num_steps


def apply_tiny(c: ml_collections.ConfigDict) -> None:
  """A network, chain and batch small enough that one training step runs in seconds on a CPU."""
  c.model.features = 8
  c.langevin.num_steps = 3
  c.langevin.unroll = 1  # unrolling multiplies compile time (tests check the numbers apart)
  c.buffer.capacity = 64
  c.loss.ent_num_refs = 8
  c.loss.ent_min_buffer = 8
  c.train.batch_size = 8
  c.train.num_steps = 3
  c.train.log_every = 1
  c.train.image_every = 2
  c.train.log_grad_terms_every = 0  # its own compilation; tests that need it switch it on
  c.train.eval_every = 0  # the quality hook trains a classifier; tests that need it switch it on
  c.train.checkpoint_every = 2
  c.train.keep_every = 0
  c.sample.num = 4
  c.sample.batch_size = 4
  c.sample.num_blocks = 1
  c.sample.block_steps = 2
  c.sample.final_steps = 2
