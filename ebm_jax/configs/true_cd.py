"""True contrastive divergence and short-run chains (critique §6.1), with or without a KL term.

  --config=configs/true_cd.py                      chains start at data (10 % refreshed), no KL
  --config=configs/true_cd.py:shortrun             chains start from noise at every step
  --config=configs/true_cd.py:right_kl             ... plus the "right" KL (critique §5.4.1)
  --config=configs/true_cd.py:paper_kl             ... plus the paper's KL
  add digits (instead of Fashion-MNIST), elastic (critique §6.3), cpu or tiny: e.g. :digits,tiny
"""

from ebm_jax.configs import default, digits, fashion_mnist, regimes

VARIANTS = ("shortrun", "right_kl", "paper_kl", "digits", "elastic", "cpu")


def get_config(variant: str = ""):
  tokens = default.parse_variant(variant, VARIANTS)
  if "right_kl" in tokens and "paper_kl" in tokens:
    raise ValueError("choose one of right_kl and paper_kl")
  size = ",".join(t for t in tokens if t in ("cpu", "tiny"))

  def regime(c) -> None:
    if "shortrun" in tokens:
      regimes.apply_short_run(c)
    else:
      regimes.apply_true_cd(c)
    for form in ("right", "paper"):
      if f"{form}_kl" in tokens:
        regimes.apply_kl(c, form)
    if "elastic" in tokens:
      regimes.apply_elastic(c)

  if "digits" in tokens:
    if "cpu" in tokens:
      raise ValueError("the digits config is already CPU-sized; drop `cpu`")
    return digits.get_config(size, regime=regime)
  return fashion_mnist.get_config(size, regime=regime)
