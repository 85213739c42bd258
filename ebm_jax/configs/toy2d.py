"""2-D toy densities with an MLP energy: densities known in closed form, so the learned model
can be compared with the truth.   --config=configs/toy2d.py:8gaussians  (rings, checkerboard,
two_moons; add ,tiny). Your own points: --config=configs/toy2d.py:points
--config.data.path=FILE.npz (one (N, 2) array; the density lives on the square
buffer.noise_range, which must hold every point: the error says which square does).

Images' ICD step sizes do not apply here: the sampler is textbook Langevin (σ² = 2λ, T = 1)
on an unbounded space, with no augmentation. Measured here rather than taken from the paper
(docs/toy2d.md, "Finding the recipe"): the EMA's decay warm-up (without it the EMA still holds
5 % of the untrained net at 3,000 steps; checkerboard 0.34 nats above the truth against 0.22
with it), the energy regulariser α = 0.01 (the paper's α = 1 keeps every density near uniform:
at T = 1 the energy is in nats and a peaked density needs a range of ~10 nats), Adam 3e-3 for
3,000 steps (1e-3 on 8gaussians, where 3e-3 loses modes), λ = 0.005 (0.0005 with K = 100
neither mixes nor fits).
"""

from ebm_jax.configs import default

DENSITIES = ("8gaussians", "rings", "checkerboard", "two_moons")
KNOWN = DENSITIES + ("points",)


def _tiny(c) -> None:
  c.model.mlp_hidden = (16, 16)
  c.sample.num = 64
  c.sample.batch_size = 64
  c.sample.final_steps = 5


def get_config(variant: str = ""):
  tokens = default.parse_variant(variant, KNOWN)
  names = [t for t in tokens if t != "tiny"] or ["8gaussians"]
  if len(names) > 1:
    raise ValueError(f"config variant {variant!r} names {len(names)} densities "
                     f"({', '.join(names)}); one config trains one density")
  c = default.get_config()
  if names[0] == "points":
    c.data.name = "points"
  else:
    c.data.name = "toy2d"
    c.data.toy_density = names[0]
  c.model.name = "mlp"
  c.model.mlp_hidden = (128, 128, 128)
  c.langevin.num_steps = 50
  c.langevin.step_size = 0.005
  c.langevin.noise_scale = 0.1  # sqrt(2 * 0.005): textbook Langevin
  c.langevin.clip_x = False
  c.buffer.storage = "float32"
  c.buffer.noise_range = (-4.0, 4.0)
  c.buffer.augment = False
  c.loss.ent_num_refs = 256
  c.loss.ent_min_buffer = 500
  c.sample.augment = False
  c.sample.num = 2000
  c.sample.batch_size = 2000
  c.sample.num_blocks = 0
  c.sample.final_steps = 500
  c.loss.reg_weight = 0.01  # measured (docstring); the paper's 1 flattens the 2-D densities
  c.optim.learning_rate = 1e-3 if names[0] == "8gaussians" else 3e-3  # measured (docstring)
  c.optim.ema_warmup = True  # measured (docstring)
  c.train.batch_size = 256
  c.train.num_steps = 3000
  c.train.log_every = 100
  return default.finish(c, variant, KNOWN, tiny=_tiny)
