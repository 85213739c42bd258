"""LSUN bedroom 128x128, unconditional (paper A.2: the same settings as CelebA-HQ)."""

from ebm_jax.configs import celebahq, default


def _tiny(c) -> None:
  celebahq.tiny(c)
  c.loss.kl_samples = 4


def get_config(variant: str = ""):
  c = celebahq.get_config()
  c.data.name = "lsun_bedroom"
  # ref §1.4: n = 32 KL rows per GPU (of 128) on lsun; 8 GPUs -> 256 of the global 1024.
  c.loss.kl_samples = 256
  c.sample.step_size = 1000.0  # ref §5.2 (places_gen λ = 1000)
  c.sample.num_blocks = 10  # ref §5.2: 10 x (20 + aug), then 80 steps
  c.sample.block_steps = 20
  c.sample.final_steps = 80
  return default.finish(c, variant, tiny=_tiny)
