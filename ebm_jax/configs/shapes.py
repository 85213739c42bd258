"""Procedurally rendered shapes with known attributes (offline), for compositional generation:
one conditional model per attribute, composed at sampling time (paper §3.3).

  --config=configs/shapes.py:shape     (also color, size, position; add ,tiny or ,cpu)
"""

from ebm_jax.configs import default

ATTRIBUTES = ("shape", "color", "size", "position")


def _small(c) -> None:
  c.data.image_size = 16


def _cpu(c) -> None:
  """16×16, and the settings the composition figures in README were measured with (λ = 5, a
  constant learning rate, the 10 × 20 + 40 test chain): default.apply_cpu's Fashion-MNIST
  lessons (λ = 20 by its pixel rule, cosine decay, 8 × 10 + 10 test chain) are not measured on
  shapes yet."""
  _small(c)
  c.langevin.step_size = 5.0
  c.optim.schedule = "constant"
  c.sample.num_blocks, c.sample.block_steps, c.sample.final_steps = 10, 20, 40


def get_config(variant: str = ""):
  tokens = default.parse_variant(variant, ATTRIBUTES + ("cpu",))
  attributes = [t for t in tokens if t not in ("tiny", "cpu")] or ["shape"]
  if len(attributes) > 1:
    raise ValueError(f"one attribute per model, got {attributes}")
  c = default.get_config()
  c.data.name = "shapes"
  c.data.image_size = 32
  c.data.attribute = attributes[0]
  c.model.name = "resnet32"
  c.model.features = 32
  c.augment.flip = attributes[0] != "position"  # a mirror image swaps left and right
  c.augment.color_strength = 0.0  # colour is an attribute: do not jitter it away
  c.augment.grayscale_prob = 0.0
  c.augment.crop_scale = (0.8, 1.0)  # position and size are attributes too
  c.augment.blur_kernel = 5
  c.train.batch_size = 64
  c.train.num_steps = 20_000
  return default.finish(c, variant, ATTRIBUTES + ("cpu",), cpu=_cpu, tiny=_small)
