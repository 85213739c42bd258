"""The pure training step (docs/algorithm.md), apart from the loop that runs it.

One step, with θ the parameters and every random number from fold_in(seed key, step):
  1. x⁺ = dequantised data; x₀ = buffer draws put through one augmentation transition, each
     replaced by x⁺ with probability buffer.data_prob (true CD, critique §6.1), then by
     U(noise_range) noise with probability p (all noise while the buffer is empty);
  2. K Langevin steps on sg(θ), keeping x̃_{K−1} for the KL sample;
  3. x_K goes into the buffer; L_ent's comparison set is then drawn from it (docs/reference.md
     §1.7);
  4. loss and gradient (losses.icd_loss, or JEM's cross-entropy added), global-norm clip + Adam,
     EMA, and the on-device divergence check (guard.update).

This module imports nothing of the training loop; `train` (the loop) and `analysis` (the
gradient decomposition) import it. tests/test_step_oracle.py recomputes one step by hand.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ebm_jax import augment as augment_lib
from ebm_jax import chain_program
from ebm_jax import chunks as chunks_lib
from ebm_jax import buffer as buffer_lib
from ebm_jax import data as data_lib
from ebm_jax import faults
from ebm_jax import guard as guard_lib
from ebm_jax import langevin, losses, models, sharding
from ebm_jax import settings as settings_lib
from ebm_jax import state as state_lib

NUM_GRID = 64  # negatives returned per step for image summaries


def energy_fn(model):
  """energy(params, model_state, x, y) -> (B, S), with no state updates. Jitted, so that a
  program applying the net several times to inputs of one shape traces it once (XLA inlines
  the calls: the compiled program is the same)."""
  apply = jax.jit(model.apply)

  def energy(params, model_state, x, y=None):
    return apply({"params": params, **model_state}, x, y)
  return energy


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, step key): step s draws everything from fold_in(step key, s), so a resumed
  run replays exactly the random numbers an uninterrupted run would have used."""
  init_key, step_key = jax.random.split(jax.random.key(seed))
  return init_key, step_key


class StepKeys(NamedTuple):
  """The step's random numbers, each drawn from one key of fold_in(fold_in(step key,
  rollbacks), step): the rollback counter is folded in first, so after a rollback the same
  steps draw new numbers."""
  dequantize: jax.Array  # x⁺ = (q + U) / levels
  draw: jax.Array  # chain starts drawn from the buffer
  augment: jax.Array  # their augmentation transition
  restart: jax.Array  # noise restarts (and, folded with 1, true CD's data starts)
  noise: jax.Array  # the restarts' uniform noise
  chain: jax.Array  # the Langevin chain (step k: fold_in(chain, k))
  add: jax.Array  # the reservoir's replacement slots
  refs: jax.Array  # L_ent's comparison set, drawn after the add
  refs_augment: jax.Array  # its augmentation transition


def step_keys(seed: int, state) -> StepKeys:
  key = jax.random.fold_in(jax.random.fold_in(seed_keys(seed)[1], state.recoveries), state.step)
  return StepKeys(*jax.random.split(key, len(StepKeys._fields)))


def dequantize(key: jax.Array, images: jax.Array, levels: int) -> jax.Array:
  """Integer levels -> [0, 1): (q + U(0,1)) / levels (ref §1.1: pixel/256 + U(0, 1/256))."""
  if levels == 0:  # float data (2-D densities)
    return images.astype(jnp.float32)
  return (images.astype(jnp.float32) + jax.random.uniform(key, images.shape)) / levels


class NegativePhase(NamedTuple):
  """Everything one step computes before its loss: the inputs of `losses.icd_loss` and what
  the step keeps or logs besides."""
  x_pos: jax.Array
  labels: jax.Array | None
  x_neg: jax.Array  # x_K
  kl: losses.KLInputs
  ent_refs: jax.Array
  ent_active: jax.Array
  model_state: Any  # after this step's power iteration (spectral norm)
  buffer: buffer_lib.Buffer  # with x_K added
  restart: jax.Array  # (B,) bool: chains started from noise
  infos: langevin.LangevinInfo  # per Langevin step
  class_labels: jax.Array | None = None  # JEM: one-hot labels of x⁺ for the cross-entropy


class ChainStart(NamedTuple):
  """Step 1 of docs/algorithm.md for one step: what the chain starts from and samples under."""
  x_pos: jax.Array
  labels: jax.Array | None  # the chain's (and L_CD's) labels; None unconditionally
  x0: jax.Array  # chain starts
  restart: jax.Array  # (B,) bool: chains started from noise
  model_state: Any  # after this step's power iteration (spectral norm)
  chain_key: jax.Array
  class_labels: jax.Array | None = None  # JEM: one-hot labels of x⁺ for the cross-entropy


class PhaseParts(NamedTuple):
  """The negative phase in three parts, so that `chain_program.build` can run the chain inside
  one program or as host-dispatched segments:
    start(state, batch) -> ChainStart       (docs/algorithm.md, step 1)
    the chain: `chain_kernel` run K times     (step 2)
    finish(state, start, final, infos) -> NegativePhase   (step 3)
  """
  start: Any
  energy: Any  # energy(params, model_state, x, y) -> (B, S)
  finish: Any


def make_phase_parts(settings: settings_lib.Settings, model, info: data_lib.DatasetInfo,
                     mesh=None) -> PhaseParts:
  """The three parts of the negative phase (see PhaseParts), each with the step's random
  numbers: every part derives its keys from (seed, state.recoveries, state.step) alone."""
  bc = settings.buffer
  energy = energy_fn(model)
  transition = augment_lib.make_transition(settings.augment) if bc.augment else None
  batch_size = settings.train.batch_size
  n_kl = settings.loss.kl_samples or batch_size
  jem = bool(settings.model.jem)
  conditional = info.num_classes > 0 and not jem  # JEM samples and trains E(x) unconditionally
  spectral = settings.model.conv == "spectral" or settings.model.name == "igebm"
  groups = (mesh.size if mesh is not None else 1) if bc.per_device else 0
  # KL rows: the first n; with per-device buffers the first n / G of each device's rows, so
  # that every device's KL samples meet its own references.
  kl_rows = (jnp.arange(n_kl) if not groups else
             (jnp.arange(groups)[:, None] * (batch_size // groups)
              + jnp.arange(n_kl // groups)[None, :]).reshape(-1))
  batch_fault = faults.batch_fault(settings)  # tests' fault injection (debug.*); off: identity
  kl_split = mesh is not None and n_kl % mesh.size == 0

  def kl_part(x):
    # The KL rows, kept split over the devices: a gather of rows is otherwise replicated by
    # the partitioner, and every device then computes L_KL's double backward for all n rows
    # (measured in benchmarks/README.md, "Host-driven chain": "The KL rows on two devices").
    rows = x if n_kl == batch_size else x[kl_rows]
    return constrain(rows) if kl_split else rows

  def constrain(x):
    # Keep per-sample work (chain, augmentation) split over the batch axis of the mesh.
    if mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharded(mesh))

  def start(state: state_lib.TrainState, batch: dict[str, jax.Array]) -> ChainStart:
    keys = step_keys(settings.seed, state)
    x_pos = dequantize(keys.dequantize, batch["image"], info.levels)
    x_pos = batch_fault(state, x_pos)
    y = batch["label"] if conditional else None

    model_state = state.model_state
    if spectral:  # one power iteration per step, on the data batch (IGEBM spectral norm)
      _, model_state = model.apply({"params": state.params, **model_state}, x_pos, y,
                                   train=True, mutable=list(model_state))

    # chain starts: buffer draws, one augmentation transition, noise restarts
    if groups:
      x0 = buffer_lib.sample_groups(state.buffer, keys.draw, batch_size)
      empty = jnp.repeat(state.buffer.size == 0, batch_size // groups)
    else:
      x0 = buffer_lib.sample(state.buffer, keys.draw, batch_size)
      empty = state.buffer.size == 0
    if transition is not None:
      x0 = augment_lib.augment_batch(transition, keys.augment, constrain(x0))
    if bc.data_prob > 0:  # true CD: some chains start at this step's data
      k_data = jax.random.fold_in(keys.restart, 1)
      from_data = jax.random.uniform(k_data, (batch_size,)) < bc.data_prob
      x0 = jnp.where(from_data.reshape((-1,) + (1,) * (x0.ndim - 1)), x_pos, x0)
    lo, hi = bc.noise_range
    noise = jax.random.uniform(keys.noise, x0.shape, minval=lo, maxval=hi)
    restart = ((jax.random.uniform(keys.restart, (batch_size,)) < bc.noise_restart_prob)
               | empty)
    x0 = constrain(jnp.where(restart.reshape((-1,) + (1,) * (x0.ndim - 1)), noise, x0))
    return ChainStart(x_pos=x_pos, labels=y, x0=x0, restart=restart, model_state=model_state,
                      chain_key=keys.chain, class_labels=batch["label"] if jem else None)

  def finish(state: state_lib.TrainState, begun: ChainStart, final: langevin.LangevinState,
             infos: langevin.LangevinInfo) -> NegativePhase:
    keys = step_keys(settings.seed, state)
    # reservoir add, then the entropy comparison set from the updated buffer
    if groups:
      new_buffer = buffer_lib.add_groups(state.buffer, keys.add, final.x, bc.kind)
      refs = buffer_lib.refs_groups(new_buffer, keys.refs, settings.loss.ent_num_refs)
    else:
      new_buffer = buffer_lib.add(state.buffer, keys.add, final.x, bc.kind)
      refs = buffer_lib.sample(new_buffer, keys.refs, settings.loss.ent_num_refs)
    if transition is not None:
      flat = refs.reshape((-1,) + refs.shape[-len(info.shape):])
      refs = augment_lib.augment_batch(transition, keys.refs_augment, flat).reshape(refs.shape)
    y = begun.labels
    kl = losses.KLInputs(x_noised=kl_part(final.x_noised), x0=kl_part(begun.x0),
                         chain_key=begun.chain_key, labels=None if y is None else kl_part(y))
    return NegativePhase(x_pos=begun.x_pos, labels=y, x_neg=final.x, kl=kl, ent_refs=refs,
                         ent_active=jnp.all(new_buffer.size > settings.loss.ent_min_buffer),
                         model_state=begun.model_state, buffer=new_buffer,
                         restart=begun.restart, infos=infos, class_labels=begun.class_labels)

  return PhaseParts(start=start, energy=energy, finish=finish)


def chain_kernel(settings: settings_lib.Settings, energy, params, begun: ChainStart):
  """The training chain's Langevin kernel on sg(θ): the chain never carries θ-gradients."""
  params_sg = jax.lax.stop_gradient(params)
  return langevin.kernel(lambda x: energy(params_sg, begun.model_state, x, begun.labels),
                         settings.langevin)


def training_chain(settings: settings_lib.Settings) -> chain_program.Chain:
  """The training chain's length and noise schedule."""
  lc = settings.langevin
  return chain_program.Chain(int(lc.num_steps), float(lc.noise_scale), bool(lc.anneal_noise))


def chain_policy(settings: settings_lib.Settings, backend: str | None = None
                 ) -> chain_program.Policy:
  """How the training chain compiles on this backend (`chain_program.policy`)."""
  lc = settings.langevin
  return chain_program.policy(lc.num_steps, lc.unroll, lc.host_segment, backend)


def phase_fns(settings: settings_lib.Settings, model, info: data_lib.DatasetInfo, mesh,
              then) -> chain_program.ChainFns:
  """The negative phase as a chain program's functions, followed by then(state, neg): the
  update for the training step, the gradient terms for ebm_jax.analysis."""
  parts = make_phase_parts(settings, model, info, mesh)
  return chain_program.ChainFns(
      start=parts.start,
      kernel=lambda params, begun: chain_kernel(settings, parts.energy, params, begun),
      finish=lambda state, begun, final, infos: then(
          state, parts.finish(state, begun, final, infos)))


def make_negative_phase(settings: settings_lib.Settings, model, info: data_lib.DatasetInfo,
                        mesh=None):
  """Returns phase(state, batch) -> NegativePhase: the algorithm's steps 1-3 for the step that
  `state` is about to take, with that step's random numbers, the K Langevin steps inside one
  traceable function (to jit, or to call inside another program)."""
  fns = phase_fns(settings, model, info, mesh, lambda state, neg: neg)
  unroll = chain_program.policy(settings.langevin.num_steps, settings.langevin.unroll, 0).unroll
  return functools.partial(chain_program.run_in_program, fns, training_chain(settings), unroll)


def make_loss_fn(settings: settings_lib.Settings, model, neg: NegativePhase):
  """loss(params) -> (total, aux with every term), the function the step differentiates."""
  energy = energy_fn(model)
  icd = functools.partial(
      losses.icd_loss, energy=lambda p, x, yy: energy(p, neg.model_state, x, yy),
      x_pos=neg.x_pos, y_pos=neg.labels, x_neg=neg.x_neg, y_neg=neg.labels, kl=neg.kl,
      ent_refs=neg.ent_refs, ent_active=neg.ent_active,
      settings=settings.loss, chain=settings.langevin)
  if neg.class_labels is None:
    return icd

  def jem_loss(params):
    """JEM: the generative loss on E(x) = −logsumexp f(x) plus the classifier's cross-entropy."""
    loss, aux = icd(params)
    logits = model.apply({"params": params, **neg.model_state}, neg.x_pos,
                         method=models.JEMEnergy.logits)
    ce = optax.softmax_cross_entropy(logits, neg.class_labels).mean()
    accuracy = (logits.argmax(-1) == neg.class_labels.argmax(-1)).mean()
    return loss + settings.loss.ce_weight * ce, {**aux, "ce": ce, "accuracy": accuracy}

  return jem_loss


def ema_decay(step, decay: float, warmup: bool):
  """The EMA's decay at `step` (the update that makes step + 1): `decay`, or with the warm-up
  min(decay, (1 + t)/(10 + t)) (TensorFlow's ExponentialMovingAverage with num_updates), under
  which the initial weights' share of the EMA after t updates is Π_{s<t} (1 + s)/(10 + s) =
  9!·t!/(t + 9)! (1e-5 after 10 updates) instead of decayᵗ (90 % after 100 at 0.999). A function of
  the step alone, so resuming stays exact."""
  if not warmup:
    return decay
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def make_update(settings: settings_lib.Settings, model, tx: optax.GradientTransformation):
  """Returns update(state, neg) -> (state, metrics, negatives[:NUM_GRID]): steps 4-5 of
  docs/algorithm.md (loss, gradient, clip + Adam, EMA, divergence guard) after a negative phase."""

  def update(state: state_lib.TrainState, neg: NegativePhase):
    (loss, aux), grads = chunks_lib.value_and_grad(
        lambda n: make_loss_fn(settings, model, n), neg, state.params, settings.loss.chunks)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.lr_scale, updates)  # guard.lr_factor^rollbacks
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, settings.optim.ema_decay, settings.optim.ema_warmup)
    ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)

    e_pos, e_neg = aux["e_pos"].mean(), aux["e_neg"].mean()
    metrics = {
        "loss": loss, "loss_cd": aux["cd"], "loss_reg": aux["reg"], "loss_opt": aux["opt"],
        "loss_ent": aux["ent"], "loss_kl": aux["kl"],
        "energy_pos": e_pos, "energy_neg": e_neg, "energy_gap": e_pos - e_neg,
        "energy_pos_std": aux["e_pos"].mean(-1).std(),
        "energy_neg_std": aux["e_neg"].mean(-1).std(),
        "langevin_grad_norm": neg.infos.grad_norm[-1].mean(),
        "langevin_energy_start": neg.infos.energy[0].mean(),
        "langevin_energy_end": neg.infos.energy[-1].mean(),
        "langevin_accept_rate": neg.infos.accepted.mean(),
        "restart_fraction": neg.restart.mean(),
        "buffer_fill": neg.buffer.size.mean() / settings.buffer.capacity,
        "entropy_active": neg.ent_active.astype(jnp.float32),
        "grad_norm": optax.tree_utils.tree_norm(grads),
        "update_norm": optax.tree_utils.tree_norm(updates),
        "param_norm": optax.tree_utils.tree_norm(params),
    }
    if neg.class_labels is not None:  # JEM
      metrics["loss_ce"], metrics["train_accuracy"] = aux["ce"], aux["accuracy"]
    metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
    guard = guard_lib.update(state.guard, metrics, state.step + 1, settings.guard)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state, buffer=neg.buffer,
                              model_state=neg.model_state, guard=guard)
    return new_state, metrics, neg.x_neg[:NUM_GRID]

  return update


def make_train_step(settings: settings_lib.Settings, model, info: data_lib.DatasetInfo,
                    tx: optax.GradientTransformation, mesh, state_sharding, batch_sharding):
  """The training step, step(state, batch) -> (state, metrics, negatives[:NUM_GRID]), built by
  `chain_program.build` in the form `chain_policy(settings)` says (the chain inside one program,
  or driven from the host on CPU). It donates `state`."""
  update = make_update(settings, model, tx)
  return chain_program.build(
      phase_fns(settings, model, info, mesh, update), training_chain(settings),
      chain_policy(settings), mesh, in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, sharding.replicated(mesh), sharding.batch_sharded(mesh)),
      donate_state=True)
