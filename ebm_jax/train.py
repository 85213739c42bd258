"""The training step (DESIGN.md's algorithm) and the training loop.

One step, with θ the parameters and every random number from fold_in(seed key, step):
  1. x⁺ = dequantised data; x₀ = buffer draws put through one augmentation transition, each
     replaced by x⁺ with probability buffer.data_prob (true CD, critique §6.1), then by
     U(noise_range) noise with probability p (all noise while the buffer is empty);
  2. K Langevin steps on sg(θ), keeping x̃_{K−1} for the KL sample;
  3. x_K goes into the buffer; L_ent's comparison set is then drawn from it (ref §1.7);
  4. loss and gradient (losses.icd_loss), global-norm clip + Adam, EMA.
"""

import functools
import json
import os
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from ebm_jax import augment as augment_lib
from ebm_jax import buffer as buffer_lib
from ebm_jax import checkpoint as checkpoint_lib
from ebm_jax import config_lib
from ebm_jax import data as data_lib
from ebm_jax import langevin, losses, models, sample as sample_lib, sharding
from ebm_jax import state as state_lib
from ebm_jax.metrics import MetricWriter

NUM_GRID = 64  # negatives returned per step for image summaries


class DivergenceError(RuntimeError):
  """The divergence guard tripped more often than guard.max_recoveries allows (or is off).
  `step` is the step at which it tripped last, `cause` what it saw."""

  def __init__(self, message: str, step: int | None = None, cause: str | None = None):
    super().__init__(message)
    self.step, self.cause = step, cause


def energy_fn(model):
  """energy(params, model_state, x, y) -> (B, S), with no state updates."""
  def energy(params, model_state, x, y=None):
    return model.apply({"params": params, **model_state}, x, y)
  return energy


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, step key): step s draws everything from fold_in(step key, s), so a resumed
  run replays exactly the random numbers an uninterrupted run would have used."""
  init_key, step_key = jax.random.split(jax.random.key(seed))
  return init_key, step_key


def dequantize(key: jax.Array, images: jax.Array, levels: int) -> jax.Array:
  """Integer levels -> [0, 1): (q + U(0,1)) / levels (ref §1.1: pixel/256 + U(0, 1/256))."""
  if levels == 0:  # float data (2-D densities)
    return images.astype(jnp.float32)
  return (images.astype(jnp.float32) + jax.random.uniform(key, images.shape)) / levels


def should_run(step: int, every: int, last_step: int) -> bool:
  """One predicate for log / checkpoint / image steps: every `every` steps and the last."""
  return every > 0 and (step % every == 0 or step == last_step)


def guard_update(guard: state_lib.GuardState, metrics: dict[str, jax.Array], step: jax.Array,
                 cfg: ml_collections.ConfigDict) -> state_lib.GuardState:
  """The on-device divergence check of one step. The first cause seen sticks until the loop
  reads it (at log / checkpoint steps) and rolls back, so no step goes unchecked and the
  step itself never waits for the host."""
  finite = (metrics["finite"] & jnp.isfinite(metrics["energy_pos"])
            & jnp.isfinite(metrics["energy_neg"]))
  over = ((jnp.abs(metrics["energy_pos"]) > cfg.max_abs_energy)
          | (jnp.abs(metrics["energy_gap"]) > cfg.max_energy_gap))
  over_count = jnp.where(over, guard.over_count + 1, 0).astype(jnp.int32)
  cause = jnp.where(~finite, state_lib.GUARD_NONFINITE,
                    jnp.where(over_count >= cfg.patience, state_lib.GUARD_ENERGY,
                              state_lib.GUARD_OK)).astype(jnp.int32)
  first = (guard.cause == state_lib.GUARD_OK) & (cause != state_lib.GUARD_OK)
  return state_lib.GuardState(over_count=over_count,
                              cause=jnp.where(first, cause, guard.cause),
                              trip_step=jnp.where(first, step, guard.trip_step))


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


def make_negative_phase(config: ml_collections.ConfigDict, model, info: data_lib.DatasetInfo,
                        mesh=None):
  """Returns phase(state, batch) -> NegativePhase: DESIGN.md's steps 1-3 for the step that
  `state` is about to take, with that step's random numbers (so analysis code sees exactly
  what the training step sees)."""
  lc, bc = config.langevin, config.buffer
  energy = energy_fn(model)
  transition = augment_lib.make_transition(config.augment) if bc.augment else None
  x_range = (0.0, 1.0) if lc.clip_x else None
  batch_size = config.train.batch_size
  n_kl = config.loss.kl_samples or batch_size
  jem = bool(config.model.get("jem", False))
  conditional = info.num_classes > 0 and not jem  # JEM samples and trains E(x) unconditionally
  spectral = config.model.conv == "spectral"
  inject_at = config.debug.inject_nan_at_step

  def constrain(x):
    # Keep per-sample work (chain, augmentation) split over the batch axis of the mesh.
    if mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharded(mesh))

  def phase(state: state_lib.TrainState, batch: dict[str, jax.Array]) -> NegativePhase:
    # The rollback counter is folded in first: after a rollback the same steps draw new numbers.
    key = jax.random.fold_in(jax.random.fold_in(seed_keys(config.seed)[1], state.recoveries),
                             state.step)
    (k_deq, k_draw, k_aug, k_restart, k_noise, k_chain, k_add, k_refs,
     k_refs_aug) = jax.random.split(key, 9)
    x_pos = dequantize(k_deq, batch["image"], info.levels)
    if inject_at > 0:  # fault injection for tests (debug.*): a NaN data batch at one step
      inject = ((state.step + 1 == inject_at)
                & (state.recoveries < config.debug.inject_nan_times))
      x_pos = jnp.where(inject, jnp.nan, x_pos)
    y = batch["label"] if conditional else None

    model_state = state.model_state
    if spectral:  # one power iteration per step, on the data batch (IGEBM spectral norm)
      _, model_state = model.apply({"params": state.params, **model_state}, x_pos, y,
                                   train=True, mutable=list(model_state))
    params_sg = jax.lax.stop_gradient(state.params)  # the chain never carries θ-gradients

    # 1. chain starts: buffer draws, one augmentation transition, noise restarts
    x0 = buffer_lib.sample(state.buffer, k_draw, batch_size)
    if transition is not None:
      x0 = augment_lib.augment_batch(transition, k_aug, constrain(x0))
    if bc.data_prob > 0:  # true CD: some chains start at this step's data
      k_data = jax.random.fold_in(k_restart, 1)
      from_data = jax.random.uniform(k_data, (batch_size,)) < bc.data_prob
      x0 = jnp.where(from_data.reshape((-1,) + (1,) * (x0.ndim - 1)), x_pos, x0)
    lo, hi = bc.noise_range
    noise = jax.random.uniform(k_noise, x0.shape, minval=lo, maxval=hi)
    restart = ((jax.random.uniform(k_restart, (batch_size,)) < bc.noise_restart_prob)
               | (state.buffer.size == 0))
    x0 = constrain(jnp.where(restart.reshape((-1,) + (1,) * (x0.ndim - 1)), noise, x0))

    # 2. K Langevin steps
    kernel = langevin.build_kernel(lambda x: energy(params_sg, model_state, x, y),
                                   lc.step_size, lc.grad_clip, x_range, lc.sampler)
    final, infos = langevin.run_chain(kernel, k_chain, x0, lc.num_steps, lc.noise_scale,
                                      lc.anneal_noise,
                                      unroll=langevin.resolve_unroll(lc.unroll, lc.num_steps))

    # 3. reservoir add, then the entropy comparison set from the updated buffer
    new_buffer = buffer_lib.add(state.buffer, k_add, final.x, bc.kind)
    refs = buffer_lib.sample(new_buffer, k_refs, config.loss.ent_num_refs)
    if transition is not None:
      refs = augment_lib.augment_batch(transition, k_refs_aug, refs)
    kl = losses.KLInputs(x_noised=final.x_noised[:n_kl], x0=x0[:n_kl], chain_key=k_chain,
                         labels=None if y is None else y[:n_kl])
    return NegativePhase(x_pos=x_pos, labels=y, x_neg=final.x, kl=kl, ent_refs=refs,
                         ent_active=new_buffer.size > config.loss.ent_min_buffer,
                         model_state=model_state, buffer=new_buffer, restart=restart,
                         infos=infos, class_labels=batch["label"] if jem else None)

  return phase


def make_loss_fn(config: ml_collections.ConfigDict, model, neg: NegativePhase):
  """loss(params) -> (total, aux with every term), the function the step differentiates."""
  energy = energy_fn(model)
  icd = functools.partial(
      losses.icd_loss, energy=lambda p, x, yy: energy(p, neg.model_state, x, yy),
      x_pos=neg.x_pos, y_pos=neg.labels, x_neg=neg.x_neg, y_neg=neg.labels, kl=neg.kl,
      ent_refs=neg.ent_refs, ent_active=neg.ent_active, cfg=config)
  if neg.class_labels is None:
    return icd

  def jem_loss(params):
    """JEM: the generative loss on E(x) = −logsumexp f(x) plus the classifier's cross-entropy."""
    loss, aux = icd(params)
    logits = model.apply({"params": params, **neg.model_state}, neg.x_pos,
                         method=models.JEMEnergy.logits)
    ce = optax.softmax_cross_entropy(logits, neg.class_labels).mean()
    accuracy = (logits.argmax(-1) == neg.class_labels.argmax(-1)).mean()
    return loss + config.loss.ce_weight * ce, {**aux, "ce": ce, "accuracy": accuracy}

  return jem_loss


def make_train_step(config: ml_collections.ConfigDict, model, info: data_lib.DatasetInfo,
                    tx: optax.GradientTransformation, mesh=None):
  """Returns the pure step(state, batch) -> (state, metrics, negatives[:NUM_GRID])."""
  phase = make_negative_phase(config, model, info, mesh)

  def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]):
    neg = phase(state, batch)  # steps 1-3: chain starts, K Langevin steps, buffer
    # 4. loss, update, EMA
    loss_fn = make_loss_fn(config, model, neg)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.lr_scale, updates)  # guard.lr_factor^rollbacks
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, 1.0 - config.optim.ema_decay)

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
        "buffer_fill": neg.buffer.size / config.buffer.capacity,
        "entropy_active": neg.ent_active.astype(jnp.float32),
        "grad_norm": optax.tree_utils.tree_norm(grads),
        "update_norm": optax.tree_utils.tree_norm(updates),
        "param_norm": optax.tree_utils.tree_norm(params),
    }
    if neg.class_labels is not None:  # JEM
      metrics["loss_ce"], metrics["train_accuracy"] = aux["ce"], aux["accuracy"]
    metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
    guard = guard_update(state.guard, metrics, state.step + 1, config.guard)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state, buffer=neg.buffer,
                              model_state=neg.model_state, guard=guard)
    return new_state, metrics, neg.x_neg[:NUM_GRID]

  return train_step


def _user_errors(fn, *args, **kwargs):
  """Turns library ValueErrors about the config into UserErrors (no traceback for users)."""
  try:
    return fn(*args, **kwargs)
  except ValueError as e:
    raise config_lib.UserError(str(e)) from e


def _check_workdir(workdir: str) -> None:
  if "://" in workdir:  # gs:// and friends: orbax and clu write there themselves
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")  # several processes may probe
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise config_lib.UserError(f"--workdir={workdir} is not writable: {e.strerror}") from e


class Setup:
  """What both training and tests need: dataset info, model, mesh, optimizer, the step."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(devices)
    config_lib.validate(config, self.mesh.size)
    self.info = data_lib.get_info(config.data)
    self.model = _user_errors(models.make_model, config.model, self.info.shape,
                              self.info.num_classes)
    self.tx = state_lib.make_optimizer(config.optim)
    self.init_fn = functools.partial(state_lib.create, config, self.model, self.info.shape,
                                     self.info.num_classes, tx=self.tx)
    self.abstract_state = jax.eval_shape(self.init_fn, jax.random.key(0))
    rep = sharding.replicated(self.mesh)
    self.state_sharding = jax.tree.map(lambda _: rep, self.abstract_state)
    self.batch_sharding = {"image": sharding.batch_sharded(self.mesh),
                           "label": sharding.batch_sharded(self.mesh)}
    self.step_fn = jax.jit(
        make_train_step(config, self.model, self.info, self.tx, self.mesh),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, rep, sharding.batch_sharded(self.mesh)),
        donate_argnums=0)

  @functools.cached_property
  def decompose_fn(self):
    """The jitted gradient decomposition of ebm_jax.analysis (built on first use)."""
    from ebm_jax import analysis  # pylint: disable=import-outside-toplevel  (imports train)
    return jax.jit(analysis.make_gradient_decomposition(self.config, self.model, self.info,
                                                        self.mesh),
                   in_shardings=(self.state_sharding, self.batch_sharding),
                   out_shardings=sharding.replicated(self.mesh))

  def init_state(self) -> state_lib.TrainState:
    """Parameters are born with their sharding (jit with out_shardings)."""
    return jax.jit(self.init_fn, out_shardings=self.state_sharding)(
        seed_keys(self.config.seed)[0])

  def fresh_state(self) -> state_lib.TrainState:
    """The state a run starts from: init_state, with the buffer filled with training images
    when buffer.init = "data" (true CD, critique §6.1)."""
    state = self.init_state()
    if self.config.buffer.init == "data":
      state = self.seed_buffer(state)
    return state

  def seed_buffer(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """Adds buffer.capacity dequantised training images (a stream of its own, so the training
    batches are those of a run without seeding)."""
    bc, levels = self.config.buffer, self.info.levels
    local_batch = self.config.train.batch_size // jax.process_count()
    stream = data_lib.make_stream(self.config.data, batch_size=local_batch,
                                  seed=self.config.seed + 1, start_step=0,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=self.state_sharding.buffer)
    def add(buf, key, images):
      k_deq, k_add = jax.random.split(key)
      return buffer_lib.add(buf, k_add, dequantize(k_deq, images, levels), bc.kind)

    buf = state.buffer
    key = jax.random.fold_in(seed_keys(self.config.seed)[0], 1)
    for i in range(-(-bc.capacity // self.config.train.batch_size)):
      buf = add(buf, jax.random.fold_in(key, i), self.global_batch(next(stream))["image"])
    logging.info("Buffer seeded with %d training images (buffer.init='data')", int(buf.size))
    return state.replace(buffer=buf)

  def stream(self, start_step: int):
    local_batch = self.config.train.batch_size // jax.process_count()
    return data_lib.make_stream(self.config.data, batch_size=local_batch,
                                seed=self.config.seed, start_step=start_step,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())

  def global_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding.host_to_global(host_batch, self.mesh)


class StopRequest:
  """SIGTERM / SIGINT handling for preemption: the first signal asks the loop to finish the
  current step, checkpoint and return; a second SIGINT interrupts at once. Handlers are only
  installed from the main thread and are restored on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("Received %s: finishing this step, writing a checkpoint, then exiting "
                    "(rerun the same command to continue).", signal.Signals(signum).name)

  @property
  def requested(self) -> bool:
    return self.signum is not None


class _Recovery:
  """Host side of the divergence guard: decides between rollback and giving up."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    self.trips: list[int] = []  # steps at which the guard tripped, this process

  def check(self, cause: int, trip_step: int, last_good: int, directory: str) -> None:
    """Raises DivergenceError when the guard is off or the rollback budget is spent."""
    what = state_lib.GUARD_CAUSES[cause]
    self.trips = [s for s in self.trips if s > trip_step - self.cfg.window] + [trip_step]
    if not self.cfg.enabled:
      raise DivergenceError(
          f"{what} at step {trip_step}; the divergence guard is off (guard.enabled=False). The "
          f"last good checkpoint is step {last_good} in {directory}.", trip_step, what)
    if len(self.trips) > self.cfg.max_recoveries:
      raise DivergenceError(
          f"{what} at step {trip_step}, the {len(self.trips)}th divergence within "
          f"guard.window={self.cfg.window} steps (guard.max_recoveries="
          f"{self.cfg.max_recoveries}); giving up. The last good checkpoint is step {last_good} "
          f"in {directory}. Lower optim.learning_rate or langevin.step_size, set "
          "guard.lr_factor below 1, or raise guard.max_recoveries.", trip_step, what)


def _rollback(setup: Setup, ckpt: checkpoint_lib.Checkpointer, bad: state_lib.TrainState,
              lr_factor: float) -> state_lib.TrainState:
  """The last good checkpoint (or the initial state) with one more rollback counted."""
  ckpt.wait()
  state = ckpt.restore_state(setup.abstract_state, setup.state_sharding, quiet=True)
  if state is None:
    state = setup.fresh_state()
  rep = sharding.replicated(setup.mesh)
  return state.replace(
      recoveries=jax.device_put(bad.recoveries + 1, rep),
      lr_scale=jax.device_put(bad.lr_scale * lr_factor, rep),
      guard=jax.device_put(state_lib.guard_init(), rep))


def _debug_signal(config: ml_collections.ConfigDict, step: int, state) -> None:
  """Fault injection for tests: the process signals itself after a chosen step."""
  if config.debug.signal_at_step and step == config.debug.signal_at_step:
    jax.block_until_ready(state)
    os.kill(os.getpid(), getattr(signal, f"SIG{config.debug.signal}"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None):
  """Trains (or resumes) in workdir; returns the final TrainState.

  Returns early, after writing a checkpoint, when SIGTERM or SIGINT arrives (preemption): the
  returned state's step is then below train.num_steps and the same call resumes. Raises
  DivergenceError when the divergence guard gives up.
  """
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  _check_workdir(workdir)
  setup = Setup(config, devices)
  tc = config.train
  ckpt = checkpoint_lib.Checkpointer(workdir, config, setup.info)
  state = ckpt.restore_state(setup.abstract_state, setup.state_sharding)
  if state is None:
    state = setup.fresh_state()
    logging.info("Starting from scratch in %s", workdir)
  start = int(state.step)
  if start:
    logging.info("Resumed from step %d in %s", start, workdir)
  is_main = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=is_main, start_step=start, num_steps=tc.num_steps)
  if is_main and start == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=2, default=list)
  logging.info("Data %s %s, %d classes; model %s with %d parameters; %d device(s)",
               config.data.name, setup.info.shape, setup.info.num_classes, config.model.name,
               sum(x.size for x in jax.tree.leaves(state.params)), setup.mesh.size)

  recovery = _Recovery(config.guard)
  step = start
  last_saved = ckpt.latest_step() or 0
  stream = setup.stream(step)
  t_last, s_last, t_start = time.time(), step, time.time()
  try:
    with StopRequest() as stop:
      while step < tc.num_steps:
        step += 1
        batch = setup.global_batch(next(stream))
        grad_terms = {}
        if should_run(step, tc.log_grad_terms_every, tc.num_steps):
          # Before the step (which donates the state): the decomposition of this very step.
          grad_terms = {k: float(v) for k, v in
                        jax.device_get(setup.decompose_fn(state, batch)).items()}
        state, metrics, negatives = setup.step_fn(state, batch)
        writer.report_progress(step)
        _debug_signal(config, step, state)
        if t_start is not None:
          jax.block_until_ready(metrics)
          logging.info("First step (compilation included) took %.1f s", time.time() - t_start)
          t_last, s_last, t_start = time.time(), step, None
        log_now = should_run(step, tc.log_every, tc.num_steps)
        ckpt_now = should_run(step, tc.checkpoint_every, tc.num_steps) or stop.requested
        if log_now or ckpt_now:
          # The one host sync: the guard has checked every step since the last one on device.
          m, guard = jax.device_get((metrics, state.guard))
          if guard.cause != state_lib.GUARD_OK:
            recovery.check(int(guard.cause), int(guard.trip_step), last_saved, ckpt.directory)
            state = _rollback(setup, ckpt, state, config.guard.lr_factor)
            event = {"event": "rollback", "cause": state_lib.GUARD_CAUSES[int(guard.cause)],
                     "trip_step": int(guard.trip_step), "detected_step": step,
                     "resumed_from_step": int(state.step), "recoveries": int(state.recoveries),
                     "lr_scale": float(state.lr_scale)}
            logging.warning("Divergence guard: %s at step %d (seen at step %d); rolled back to "
                            "step %d, rollback %d, learning-rate scale %g.", event["cause"],
                            event["trip_step"], step, event["resumed_from_step"],
                            event["recoveries"], event["lr_scale"])
            writer.rollback(int(state.step), event)
            step = s_last = int(state.step)
            stream = setup.stream(step)
            t_last = time.time()
            if stop.requested:  # the state rolled back to is a checkpoint already
              break
            continue
          now = time.time()
          rate = (step - s_last) / max(now - t_last, 1e-9) if step > s_last else float("nan")
          if log_now:
            scalars = {k: float(v) for k, v in m.items() if k != "finite"}
            scalars["perf/steps_per_sec"] = rate
            writer.write_scalars(step, {**scalars, **grad_terms})
            grad_terms = {}
            eta = (tc.num_steps - step) / rate if rate == rate and rate > 0 else float("nan")
            logging.info("step %d/%d | loss %.4f | E+ %.4f E- %.4f | KL %.4f | %.2f steps/s | "
                         "ETA %s", step, tc.num_steps, scalars["loss"], scalars["energy_pos"],
                         scalars["energy_neg"], scalars["loss_kl"], rate, _fmt_eta(eta))
          t_last, s_last = now, step
        if grad_terms:  # a step that is not a log step
          writer.write_scalars(step, grad_terms)
        if should_run(step, tc.image_every, tc.num_steps) and len(setup.info.shape) == 3:
          # every process takes part in the gather (the negatives are split over processes)
          grid = sample_lib.make_grid(multihost_utils.process_allgather(negatives, tiled=True))
          writer.write_images(step, {"negatives": grid[None]})
        if ckpt_now:  # only reached with a clean guard: every checkpoint is a good one
          ckpt.save(step, state)
          last_saved = step
        if stop.requested:
          break
  except DivergenceError:  # leave metrics and checkpoints complete for whoever catches it
    ckpt.wait()
    ckpt.close()
    writer.close()
    raise
  ckpt.wait()
  writer.flush()
  if stop.requested:
    logging.warning("Stopped at step %d by %s; checkpoint written. Rerun the same command to "
                    "continue.", step, signal.Signals(stop.signum).name)
  elif is_main and tc.num_steps > start:
    # From host copies of the (replicated) EMA parameters: the sampler then runs on this
    # process's devices alone, which a multi-process run needs (only process 0 samples).
    path = sample_lib.sample_to_files(config, setup.model, setup.info,
                                      jax.device_get(state.ema_params),
                                      jax.device_get(state.model_state),
                                      os.path.join(workdir, "samples"), f"step_{int(step)}")
    logging.info("Samples from the EMA parameters: %s", path)
  ckpt.close()
  writer.close()
  return state


def _fmt_eta(seconds: float) -> str:
  if seconds != seconds:
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
