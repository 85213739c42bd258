"""The one training-state pytree, its optimizer, and its creation (params born sharded)."""

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from ebm_jax import buffer as buffer_lib
from ebm_jax import settings as settings_lib


# Why the divergence guard tripped (GuardState.cause).
GUARD_OK, GUARD_NONFINITE, GUARD_ENERGY = 0, 1, 2
GUARD_CAUSES = {GUARD_NONFINITE: "non-finite loss, energy or gradient",
                GUARD_ENERGY: "energies beyond guard.max_abs_energy / guard.max_energy_gap"}


class GuardState(NamedTuple):
  """What the on-device divergence guard has seen since the last rollback (guard.update)."""
  over_count: jax.Array  # int32 (): consecutive steps with energies beyond the bounds
  cause: jax.Array  # int32 (): GUARD_OK, or the first cause seen (sticky until a rollback)
  trip_step: jax.Array  # int32 (): the step at which it tripped (0 when it has not)


def guard_init() -> GuardState:
  # Three separate arrays: the step donates the state, and a buffer may be donated only once.
  return GuardState(*(jnp.zeros((), jnp.int32) for _ in range(3)))


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 (): optimizer steps taken
  params: Any
  ema_params: Any  # exponential moving average of params, used for sampling (paper §3.1)
  opt_state: Any
  buffer: buffer_lib.Buffer  # replay buffer of past negatives; checkpointed (ref §7.1.8)
  model_state: Any  # non-trained collections, e.g. {"spectral": power-iteration vectors}
  recoveries: jax.Array  # int32 (): rollbacks so far; folded into every step key
  lr_scale: jax.Array  # float32 (): learning-rate multiplier (guard.lr_factor per rollback)
  guard: GuardState


OPTIMIZERS = ("adam", "igebm")
SCHEDULES = ("constant", "cosine")


def make_optimizer(cfg: settings_lib.OptimSettings,
                   num_steps: int = 0) -> optax.GradientTransformation:
  """Global-norm clip, then Adam (ref §4: clip 0.5, Adam(2e-4, β=(0, 0.9), eps=1e-8)).

  `cfg.schedule='cosine'` decays the learning rate to `cfg.final_lr_fraction` of its value over
  `num_steps` (optax.cosine_decay_schedule); 'constant' (the reference's) keeps it.
  `cfg.name='igebm'` is IGEBM's optimiser instead (openai/ebm_code_release, custom_adam.py):
  Adam after a per-element gradient clip at 3·sqrt(v̂) + 0.1."""
  lr = cfg.learning_rate
  if cfg.schedule == "cosine":
    lr = optax.cosine_decay_schedule(cfg.learning_rate, max(int(num_steps), 1),
                                     alpha=cfg.final_lr_fraction)
  if cfg.name == "igebm":
    opt = optax.chain(_igebm_scale_by_adam(cfg.b1, cfg.b2, cfg.eps),
                      optax.scale_by_learning_rate(lr))
  else:
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  if cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt


def _igebm_scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """IGEBM's Adam (openai/ebm_code_release, custom_adam.py, `AdamOptimizer._apply_dense`): each
  gradient element is clipped to ±(3·sqrt(v/(1 − β₂ᵗ)) + 0.1), v the second moment before this
  step and t this step's count from 1 ("Clip gradients by 3 std"), then a plain Adam step."""
  inner = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

  def update_fn(updates, state, params=None):
    del params
    t = state.count.astype(jnp.float32) + 1
    bound = jax.tree.map(lambda v: 3.0 * jnp.sqrt(v / (1 - b2 ** t)) + 0.1, state.nu)
    clipped = jax.tree.map(lambda g, c: jnp.clip(g, -c, c), updates, bound)
    return inner.update(clipped, state)

  return optax.GradientTransformation(inner.init, update_fn)


def create(config: settings_lib.Settings, model, shape: tuple[int, ...], num_classes: int,
           key: jax.Array, tx: optax.GradientTransformation,
           buffer_groups: int = 0) -> TrainState:
  """Initial state for data of per-example `shape` (call under jit for sharded creation);
  `buffer_groups` > 0: that many per-device buffers (buffer.per_device)."""
  x = jnp.zeros((1,) + tuple(shape), jnp.float32)
  y = jnp.zeros((1, num_classes), jnp.float32) if num_classes else None
  variables = model.init(key, x, y)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      ema_params=jax.tree.map(jnp.copy, params),  # EMA starts as a copy (ref §4)
      opt_state=tx.init(params),
      buffer=(buffer_lib.init_groups(buffer_groups, config.buffer.capacity, shape,
                                     config.buffer.storage) if buffer_groups else
              buffer_lib.init(config.buffer.capacity, shape, config.buffer.storage)),
      model_state=model_state, recoveries=jnp.zeros((), jnp.int32),
      lr_scale=jnp.ones((), jnp.float32), guard=guard_init())
