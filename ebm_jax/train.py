"""Set-up (mesh, shardings, the jitted step) and the training loop: `train_and_evaluate`.

The step itself is `ebm_jax.step` (pure, imports nothing of this module); the divergence
guard's check and rollback policy are `ebm_jax.guard`. This module adds what a run needs around
them: checkpoints, metrics, preemption (ebm_jax.signals), rollbacks and the samples at the end.
"""

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ebm_jax import buffer as buffer_lib
from ebm_jax import checkpoint as checkpoint_lib
from ebm_jax import config_lib
from ebm_jax import data as data_lib
from ebm_jax import distributed
from ebm_jax import files
from ebm_jax import guard as guard_lib
from ebm_jax import images, models, sampling, sharding, signals
from ebm_jax import settings as settings_lib
from ebm_jax import state as state_lib
from ebm_jax.errors import DivergenceError
from ebm_jax.metrics import MetricWriter
from ebm_jax import step as step_lib
from ebm_jax.step import dequantize, seed_keys


def should_run(step: int, every: int, last_step: int) -> bool:
  """One predicate for log / checkpoint / image steps: every `every` steps and the last."""
  return every > 0 and (step % every == 0 or step == last_step)


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
  """What both training and tests need: dataset info, model, mesh, optimizer, the step.

  The boundary of the typed settings: `config` (the ConfigDict, kept for checkpoints and
  config.json) is validated and turned into `settings` (ebm_jax.settings) here, and only
  `settings` goes below."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(devices)
    config_lib.validate(config, self.mesh.size)
    self.settings = settings = settings_lib.Settings.from_config(config)
    self.info = data_lib.get_info(settings.data)
    self.model = _user_errors(models.make_model, settings.model, self.info.shape,
                              self.info.num_classes)
    self.tx = state_lib.make_optimizer(settings.optim, settings.train.num_steps)
    groups = self.mesh.size if settings.buffer.per_device else 0
    self.init_fn = functools.partial(state_lib.create, settings, self.model, self.info.shape,
                                     self.info.num_classes, tx=self.tx, buffer_groups=groups)
    self.abstract_state = jax.eval_shape(self.init_fn, jax.random.key(0))
    rep = sharding.replicated(self.mesh)
    self.state_sharding = jax.tree.map(lambda _: rep, self.abstract_state)
    if groups:  # each device holds its own buffer
      split = sharding.batch_sharded(self.mesh)
      self.state_sharding = self.state_sharding.replace(
          buffer=jax.tree.map(lambda _: split, self.abstract_state.buffer))
    self.batch_sharding = {"image": sharding.batch_sharded(self.mesh),
                           "label": sharding.batch_sharded(self.mesh)}
    self.chain_policy = step_lib.chain_policy(settings)
    self.step_fn = step_lib.make_train_step(settings, self.model, self.info, self.tx, self.mesh,
                                            self.state_sharding, self.batch_sharding)

  @property
  def host_segment(self) -> int:
    """Steps per host-dispatched chain program of the step (0: the chain inside the program)."""
    return self.chain_policy.segment

  @functools.cached_property
  def decompose_fn(self):
    """The gradient decomposition of ebm_jax.analysis, built on first use with the training
    step's chain program (so on CPU a long chain runs host-driven here too)."""
    from ebm_jax import analysis  # pylint: disable=import-outside-toplevel  (only when asked)
    return analysis.make_gradient_decomposition(self.settings, self.model, self.info, self.mesh,
                                                self.state_sharding, self.batch_sharding)

  def init_state(self) -> state_lib.TrainState:
    """Parameters are born with their sharding (jit with out_shardings)."""
    return jax.jit(self.init_fn, out_shardings=self.state_sharding)(
        seed_keys(self.settings.seed)[0])

  def fresh_state(self) -> state_lib.TrainState:
    """The state a run starts from: init_state, with the buffer filled with training images
    when buffer.init = "data" (true CD, critique §6.1)."""
    state = self.init_state()
    if self.settings.buffer.init == "data":
      state = self.seed_buffer(state)
    return state

  def seed_buffer(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """Adds buffer.capacity dequantised training images (a stream of its own, so the training
    batches are those of a run without seeding)."""
    bc, levels = self.settings.buffer, self.info.levels
    local_batch = self.settings.train.batch_size // jax.process_count()
    stream = data_lib.make_stream(self.settings.data, batch_size=local_batch,
                                  seed=self.settings.seed + 1, start_step=0,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=self.state_sharding.buffer)
    def add(buf, key, images):
      k_deq, k_add = jax.random.split(key)
      put = buffer_lib.add_groups if bc.per_device else buffer_lib.add
      return put(buf, k_add, dequantize(k_deq, images, levels), bc.kind)

    buf = state.buffer
    key = jax.random.fold_in(seed_keys(self.settings.seed)[0], 1)
    groups = self.mesh.size if bc.per_device else 1  # each group takes B / groups per batch
    for i in range(-(-bc.capacity * groups // self.settings.train.batch_size)):
      buf = add(buf, jax.random.fold_in(key, i), self.global_batch(next(stream))["image"])
    logging.info("Buffer seeded with %d training images (buffer.init='data')",
                 int(np.sum(jax.device_get(buf.size))))
    return state.replace(buffer=buf)

  def stream(self, start_step: int):
    local_batch = self.settings.train.batch_size // jax.process_count()
    return data_lib.make_stream(self.settings.data, batch_size=local_batch,
                                seed=self.settings.seed, start_step=start_step,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())

  def global_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding.host_to_global(host_batch, self.mesh)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None):
  """Trains (or resumes) in workdir; returns the final TrainState.

  Returns early, after writing a checkpoint, when SIGTERM or SIGINT arrives (preemption): the
  returned state's step is then below train.num_steps and the same call resumes. Raises
  DivergenceError when the divergence guard gives up.
  """
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  setup = Setup(config, devices)  # the whole config is checked before the workdir is touched
  _check_workdir(workdir)
  tc = config.train
  ckpt = checkpoint_lib.Checkpointer(workdir, config, setup.info)
  state = ckpt.restore_state(setup.abstract_state, setup.state_sharding)
  if state is None:
    state = setup.fresh_state()
    logging.info("Starting from scratch in %s", workdir)
  start = int(state.step)
  if start >= tc.num_steps:
    logging.warning("The run in %s is already at step %d of train.num_steps=%d; nothing to do "
                    "(raise --config.train.num_steps to train on).", workdir, start, tc.num_steps)
    ckpt.close()
    return state
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

  quality = None
  if tc.eval_every > 0 and is_main and len(setup.info.shape) == 3:
    from ebm_jax.eval import quality as quality_lib  # pylint: disable=import-outside-toplevel
    quality = quality_lib.TrainingQuality(config, setup.model, setup.info, files.cache_dir())
  recovery = guard_lib.Recovery(config.guard)
  step = start
  last_saved = ckpt.latest_step() or 0
  stream = setup.stream(step)
  t_last, s_last, t_start = time.time(), step, time.time()
  try:
    with signals.StopRequest() as stop:
      previous_metrics, step_fn = None, setup.step_fn
      while step < tc.num_steps:
        step += 1
        batch = setup.global_batch(next(stream))
        if t_start is not None:  # several processes start the step together (distributed.py)
          step_fn = distributed.compile_together(step_fn, state, batch, name=f"step-{step}")
        grad_terms = {}
        if should_run(step, tc.log_grad_terms_every, tc.num_steps):
          # Before the step (which donates the state): the decomposition of this very step.
          grad_terms = {k: float(v) for k, v in
                        jax.device_get(setup.decompose_fn(state, batch)).items()}
        state, metrics, negatives = step_fn(state, batch)
        # At most one step in flight: without this wait the host dispatches up to log_every
        # steps ahead of the device, and a SIGTERM then waited for all of them (measured on the
        # Fashion-MNIST CPU run: 63 s to stop, past a cloud's 30 s grace period; 5 s with it).
        jax.block_until_ready(previous_metrics)
        previous_metrics = metrics
        signals.debug_signal(config, step, state, ckpt.wait)
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
          grid = images.make_grid(multihost_utils.process_allgather(negatives, tiled=True))
          writer.write_images(step, {"negatives": grid[None]})
        if quality is not None and should_run(step, tc.eval_every, tc.num_steps):
          _log_quality(quality, writer, step, state)
        if ckpt_now:  # only reached with a clean guard: every checkpoint is a good one
          ckpt.save(step, state,
                    kill_before_commit=step == config.debug.kill_in_save_at_step)
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
                    "continue.", step, stop.name)
  elif is_main and tc.num_steps > start:
    # From host copies of the (replicated) EMA parameters: the sampler then runs on this
    # process's devices alone, which a multi-process run needs (only process 0 samples).
    variables = {"params": jax.device_get(state.ema_params),
                 **jax.device_get(state.model_state)}
    num = config.sample.num
    labels = sampling.default_labels(num, setup.info.num_classes)
    x, diag = sampling.for_model(config, setup.model, setup.info.shape).draw(
        jax.random.key(0), num, labels, variables)
    extra = {} if labels is None else {"labels": labels.argmax(-1)}
    path = images.save_samples(x, os.path.join(workdir, "samples"), f"step_{int(step)}",
                               energy_per_step=diag["energy"], grad_norm_per_step=diag["grad_norm"],
                               **extra)
    logging.info("Samples from the EMA parameters: %s", path)
  ckpt.close()
  writer.close()
  return state


def _log_quality(quality, writer: MetricWriter, step: int, state) -> None:
  """The quality hook (train.eval_every): EMA samples scored, logged and shown as a grid."""
  t = time.time()
  scalars, x = quality(step, jax.device_get(state.ema_params), jax.device_get(state.model_state))
  writer.write_scalars(step, scalars)
  writer.write_images(step, {"quality_samples": images.make_grid(x)[None]})
  frechet = scalars.get("quality/frechet")
  logging.info("step %d quality | Fréchet %s | classes %s | mean pixel %.3f | saturated %.3f "
               "| %.0f s", step, "n/a" if frechet is None else f"{frechet:.1f}",
               int(scalars["quality/classes"]) if "quality/classes" in scalars else "n/a",
               scalars["quality/mean_pixel"], scalars["quality/saturated_frac"],
               time.time() - t)


def _fmt_eta(seconds: float) -> str:
  if seconds != seconds:
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
