"""One conditional model per CelebA attribute, for compositional generation (paper §3.3, Fig. 10;
ref §3.5): train one run per attribute and compose them at sampling time.

  --config=configs/celeba_attributes.py:Young      (also Male, Smiling, Wavy_Hair; add ,tiny)

CelebA with attribute labels comes from tfds `celeb_a` (218x178, centre-cropped and resized);
labels are one-hot(2) of the attribute (ref §1.1).
"""

from ebm_jax.configs import celebahq, default

ATTRIBUTES = ("Young", "Male", "Smiling", "Wavy_Hair")


def get_config(variant: str = ""):
  tokens = default.parse_variant(variant, ATTRIBUTES)
  attributes = [t for t in tokens if t != "tiny"] or ["Young"]
  if len(attributes) > 1:
    raise ValueError(f"one attribute per model, got {attributes}")
  c = celebahq.get_config()
  c.data.name = "celeba"
  c.data.attribute = attributes[0]
  return default.finish(c, variant, ATTRIBUTES, tiny=celebahq.tiny)
