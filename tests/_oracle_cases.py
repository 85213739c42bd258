"""The hand-made cases of tests/test_step_oracle.py, shared with tests/test_host_step.py: each
case's config, whose values are chosen so that every wiring the oracle checks acts in one step,
and the state that step starts from."""

import importlib

import jax
import numpy as np

B = 16  # batch: enough rows that every probability below picks some rows and leaves others
FILLED = 40  # items in the buffer before the step (of a 64-item buffer)


def config(kind: str, fashion_dir: str):
  """The oracle's config for one case: "icd" (the digits net, unconditional), "cond" (the same
  net conditioned on the digit class through FiLM), "anneal" (icd with annealed noise over
  K = 5 steps), "cond_anneal" (both), "igebm" or "jem" (their Fashion-MNIST regimes)."""
  if kind in ("icd", "cond", "anneal", "cond_anneal"):
    c = importlib.import_module("ebm_jax.configs.digits").get_config("tiny")
    c.buffer.noise_restart_prob = 0.3
    c.buffer.data_prob = 0.3
    c.loss.kl_samples = 8  # n < B: L_KL on the first n rows only
    c.loss.ent_min_buffer = FILLED  # active once this step's add lands
    if kind.startswith("cond"):
      c.data.attribute = "class"  # one-hot labels of the 10 digits
    if kind.endswith("anneal"):
      c.langevin.anneal_noise = True
      c.langevin.num_steps = 5  # with host segments of 2: programs of 2, 2 and 1 steps
  elif kind == "igebm":
    c = importlib.import_module("ebm_jax.configs.igebm_fashion_mnist").get_config("tiny")
    c.buffer.noise_restart_prob = 0.3
    c.langevin.grad_clip = 0.003  # IGEBM's elementwise clip of ∇ₓE, small enough to act here
    c.optim.name = "adam"  # the oracle's Adam; IGEBM's is checked in tests/test_regimes.py
  elif kind == "jem":
    c = importlib.import_module("ebm_jax.configs.jem_fashion_mnist").get_config("tiny")
    c.buffer.noise_restart_prob = 0.3
    c.loss.ent_min_buffer = FILLED
  else:
    raise ValueError(kind)
  c.data.download = False
  if c.data.name == "fashion_mnist":
    c.data.path = fashion_dir
    c.data.image_size = 12  # the smallest size the MNIST net takes comfortably: fast
  c.train.batch_size = B
  c.langevin.step_size = 2.0
  c.langevin.noise_scale = 0.01
  c.optim.b1, c.optim.b2, c.optim.eps = 0.3, 0.8, 1e-6
  c.optim.grad_clip_norm = 1e-3  # below any gradient norm this net has: the clip acts
  c.optim.learning_rate = 1e-2
  c.optim.ema_decay = 0.9
  c.seed = 3
  return c


def known_state(setup, rng: np.random.Generator):
  """A state made by hand: a partly filled buffer, Adam moments that are not zero, one rollback
  counted (folded into the keys) and a learning-rate scale of 0.5."""
  state = jax.device_get(setup.init_state())
  buf = state.buffer
  data = np.zeros(buf.data.shape, np.uint8)
  data[:FILLED] = rng.integers(0, 256, (FILLED,) + buf.data.shape[1:], dtype=np.uint8)
  buffer = buf._replace(data=data, size=np.int32(FILLED), seen=np.int32(FILLED))
  clip_state, (adam, lr_state) = state.opt_state
  moments = lambda t, f: jax.tree.map(lambda p: f(p.shape).astype(np.float32), t)
  adam = adam._replace(count=np.int32(5),
                       mu=moments(adam.mu, lambda s: rng.normal(0, 0.01, s)),
                       nu=moments(adam.nu, lambda s: rng.uniform(1e-6, 1e-4, s)))
  ema = jax.tree.map(lambda p: p + rng.normal(0, 0.01, p.shape).astype(np.float32),
                     state.params)
  return state.replace(step=np.int32(7), buffer=buffer,
                       opt_state=(clip_state, (adam, lr_state)),
                       ema_params=ema, recoveries=np.int32(1), lr_scale=np.float32(0.5))


def hand_keys(seed: int, state):
  """The step's nine keys derived by hand from the algorithm's rule: fold the rollback count,
  then the step, into the seed's step key, and split in the documented order (dequantise,
  draw, augment, restart, noise, chain, add, refs, refs' augmentation)."""
  import jax  # pylint: disable=import-outside-toplevel
  base = jax.random.split(jax.random.key(seed))[1]
  key = jax.random.fold_in(jax.random.fold_in(base, state.recoveries), state.step)
  return jax.random.split(key, 9)
