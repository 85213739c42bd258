"""The offline quickstart: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside
the scikit-learn wheel), a small MNIST-style net, sized to train in minutes on a CPU (timed in
docs/results.md).

  python -m ebm_jax.main --config=configs/digits.py --workdir=runs/digits

The paper's CIFAR-10 values (λ = 100, Adam 2e-4) are tuned for ~100k steps of a 6.6 M-parameter
net. At the quickstart's budget (1,500 steps of a 195 k-parameter net) they learn nothing
visible: measured here, 2,000 steps with λ = 100 and lr 2e-4 left the replay buffer and the
samples as saturated noise. With lr 1e-3, λ = 10 gave digit-like samples with many scribbles
after 1,200 steps, λ = 5 clearly recognisable digits of every class.

Two lessons of the Fashion-MNIST recipe (docs/fashion_mnist_recipe.md) carried over and
measured here (2026-12-01, one seed each, `evaluate quality --num=1000`, floor 39.4): a cosine
decay of the learning rate and a test-time chain that repeats the training chain (8 × (augmentation
+ 10 steps) + 10 steps, instead of 5 × 20 + 40) took the Fréchet distance from 90.7 to 46.0,
with all ten classes (coverage entropy 2.26 → 2.29) and less speckle in the samples.
"""

from ebm_jax.configs import default


def get_config(variant: str = "", regime: default.Edit | None = None):
  c = default.get_config()
  c.data.name = "digits"
  c.data.image_size = 8  # native size
  c.data.channels = 1
  c.model.name = "mnist"  # three downsampling blocks: 8 -> 4 -> 2 -> 1
  c.model.features = 16  # 195 k parameters; F=32 costs several times as much per step
  c.model.multiscale = False  # too small an image for 1/2 and 1/4 resolution heads
  c.model.attention = False
  c.langevin.num_steps = 10  # K; half the cost of K = 20, enough with persistent chains
  c.langevin.step_size = 5.0  # measured (see above); the paper's CIFAR-10 value is 100
  c.langevin.noise_scale = 0.001  # paper A.2
  c.langevin.unroll = 0  # auto: the whole chain unrolled on CPU, faster steps (docs/results.md)
  c.buffer.capacity = 5000
  c.loss.ent_num_refs = 100
  c.loss.ent_min_buffer = 500
  c.augment.flip = False  # a mirrored digit is another symbol
  c.augment.color_strength = 0.0  # grey images
  c.augment.grayscale_prob = 0.0
  c.augment.crop_scale = (0.7, 1.0)  # mild: small crops of an 8x8 digit lose the digit
  c.augment.blur_kernel = 0
  c.optim.learning_rate = 1e-3  # measured (see above); the reference uses 2e-4
  c.optim.schedule = "cosine"  # to 0 over num_steps: Fréchet 90.7 -> 46.0 with the chain below
  c.optim.ema_decay = 0.99
  c.train.batch_size = 32
  c.train.num_steps = 1500
  c.train.log_every = 100
  c.train.log_grad_terms_every = 100  # for notebooks/gradient_magnitudes.ipynb (paper Fig. 12)
  c.train.image_every = 500
  # quality/* (Fréchet distance, coverage, saturation) of 256 EMA samples, once at the end: each
  # evaluation runs the 90-step test chain on 256 chains (timed in docs/results.md).
  c.train.eval_every = 1500
  c.eval.classifier_steps = 500  # the digits classifier passes 0.85 test accuracy by 300 steps
  c.train.checkpoint_every = 500
  c.train.keep_every = 0
  c.sample.num = 64
  # The test-time chain repeats the training chain: 8 × (augmentation + K steps) + K steps.
  c.sample.num_blocks = 8
  c.sample.block_steps = c.langevin.num_steps
  c.sample.final_steps = c.langevin.num_steps
  return default.finish(c, variant, regime=regime)
