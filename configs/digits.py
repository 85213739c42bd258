"""The offline quickstart: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside
the scikit-learn wheel), a small MNIST-style net, a few minutes on a laptop CPU.

  python -m ebm_jax.main --config=configs/digits.py --workdir=runs/digits
"""

from configs import default


def get_config(variant: str = ""):
  c = default.get_config()
  c.data.name = "digits"
  c.data.image_size = 8  # native size
  c.data.channels = 1
  c.model.name = "mnist"  # three downsampling blocks: 8 -> 4 -> 2 -> 1
  c.model.features = 32
  c.model.multiscale = False  # too small an image for 1/2 and 1/4 resolution heads
  c.model.attention = False
  c.langevin.num_steps = 20
  c.langevin.step_size = 100.0
  c.langevin.noise_scale = 0.001
  c.buffer.capacity = 5000
  c.loss.ent_num_refs = 100
  c.loss.ent_min_buffer = 500
  c.augment.flip = False  # a mirrored digit is another symbol
  c.augment.color_strength = 0.0  # grey images
  c.augment.grayscale_prob = 0.0
  c.augment.crop_scale = (0.7, 1.0)  # mild: small crops of an 8x8 digit lose the digit
  c.augment.blur_kernel = 0
  c.optim.learning_rate = 2e-4
  c.optim.ema_decay = 0.99
  c.train.batch_size = 64
  c.train.num_steps = 3000
  c.train.log_every = 100
  c.train.image_every = 500
  c.train.checkpoint_every = 1000
  c.train.keep_every = 0
  c.sample.num = 64
  c.sample.num_blocks = 5
  c.sample.block_steps = 20
  c.sample.final_steps = 40
  default.finish(c, variant)
  if "tiny" in default.parse_variant(variant):
    c.loss.ent_min_buffer = 8
  return c
