"""Set-up (mesh, shardings, the jitted step) and the training loop: `train_and_evaluate`.

The step itself is `ebm_jax.step` (pure, imports nothing of this module); the divergence
guard's check and rollback policy are `ebm_jax.guard`. The loop runs the step and the periodic
actions due after it, with preemption (ebm_jax.signals), rollbacks and the samples at the end.
"""

import dataclasses
import datetime
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple

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
from ebm_jax import faults, images, models, sampling, sharding, signals
from ebm_jax import settings as settings_lib
from ebm_jax import state as state_lib
from ebm_jax.errors import DivergenceError
from ebm_jax.metrics import MetricWriter, Progress
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None):
  """Trains (or resumes) in workdir; returns the final TrainState. After each step run the
  periodic actions due (`_actions`); where one reads the metrics the loop syncs with the host,
  once, and a tripped divergence guard rolls back instead (guard.Recovery.roll_back). SIGTERM
  or SIGINT: a checkpoint, then return (the same call resumes). DivergenceError: given up."""
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  setup = Setup(config, devices)  # the whole config is checked before the workdir is touched
  ckpt, state, writer = _open(setup, workdir)
  if writer is None:  # nothing left to train
    return state
  progress, recovery = Progress(setup.settings.train), guard_lib.Recovery(setup.settings.guard)
  actions, step, step_fn = _actions(setup, ckpt, writer, progress), int(state.step), setup.step_fn
  tc = setup.settings.train
  stream, previous, t_start = setup.stream(step), None, time.time()
  try:
    with signals.StopRequest() as stop:
      while step < tc.num_steps and not stop.requested:
        step, first = step + 1, previous is None
        batch = setup.global_batch(next(stream))
        if first:  # several processes start the step together (distributed.py)
          step_fn = distributed.compile_together(step_fn, state, batch, name=f"step-{step}")
        done = _Done(step)
        if should_run(step, tc.log_grad_terms_every, tc.num_steps):
          done.grad_terms = {k: float(v) for k, v in  # before the step, which donates the state
                             jax.device_get(setup.decompose_fn(state, batch)).items()}
        state, metrics, done.negatives = step_fn(state, batch)
        # At most one step in flight: without this wait the host dispatches up to log_every
        # steps ahead of the device, and a SIGTERM then waits for all of them, which can outlast
        # a cloud's grace period (measured in docs/results.md, "Stopping on SIGTERM").
        jax.block_until_ready(previous)
        previous, done.state = metrics, state
        faults.signal_after_step(setup.settings, step, state, ckpt.wait)
        if first:
          jax.block_until_ready(metrics)
          logging.info("First step (compilation included) took %.1f s", time.time() - t_start)
        due = [a for a in actions if should_run(step, a.every, tc.num_steps)
               or (a.on_stop and stop.requested)]
        if any(a.syncs for a in due):
          # The one host sync: the guard has checked every step since the last one on device.
          done.metrics, seen = jax.device_get((metrics, state.guard))
          if seen.cause != state_lib.GUARD_OK:  # no action runs: the state rolls back
            state = recovery.roll_back(seen, step, state, ckpt, setup, writer)
            step = progress.restart(int(state.step))
            stream = setup.stream(step)
            continue
        for action in due:
          action.run(done)
  except DivergenceError:  # leave metrics and checkpoints complete for whoever catches it
    ckpt.close()  # (after the saves under way)
    writer.close()
    raise
  ckpt.wait()
  writer.flush()
  if stop.requested:
    logging.warning("Stopped at step %d by %s; checkpoint written. Rerun the same command to "
                    "continue.", step, stop.name)
  elif jax.process_index() == 0:
    _final_samples(setup, state, workdir)
  ckpt.close()
  writer.close()
  return state


def _open(setup: Setup, workdir: str):
  """(Checkpointer, state to start from, MetricWriter); no writer when there is nothing to do."""
  _check_workdir(workdir)
  config, num_steps = setup.config, setup.config.train.num_steps
  ckpt = checkpoint_lib.Checkpointer(workdir, config, setup.info)
  state = ckpt.restore_state(setup.abstract_state, setup.state_sharding)
  if state is None:
    state = setup.fresh_state()
    logging.info("Starting from scratch in %s", workdir)
  start = int(state.step)
  if start >= num_steps:
    logging.warning("The run in %s is already at step %d of train.num_steps=%d; nothing to do "
                    "(raise --config.train.num_steps to train on).", workdir, start, num_steps)
    ckpt.close()
    return ckpt, state, None
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0, start_step=start,
                        num_steps=num_steps)
  if start:
    logging.info("Resumed from step %d in %s", start, workdir)
  elif jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=2, default=list)
  logging.info("Data %s %s, %d classes; model %s with %d parameters; %d device(s)",
               config.data.name, setup.info.shape, setup.info.num_classes, config.model.name,
               sum(x.size for x in jax.tree.leaves(state.params)), setup.mesh.size)
  return ckpt, state, writer


@dataclasses.dataclass
class _Done:
  """One finished step as the periodic actions read it."""
  step: int
  grad_terms: dict = dataclasses.field(default_factory=dict)  # taken before the step
  state: Any = None
  negatives: Any = None
  metrics: dict | None = None  # the host copy, at the steps where an action syncs
  rate: float = float("nan")  # steps/s since the previous log step, at log steps


class _Periodic(NamedTuple):
  """A periodic action: `run(done)` at should_run(step, every, train.num_steps) and, `on_stop`,
  after the step at which a stop was asked. `syncs`: it reads the host copy of the metrics."""
  every: int
  run: Callable[[_Done], None]
  syncs: bool = False
  on_stop: bool = False


def _actions(setup: Setup, ckpt, writer: MetricWriter, progress) -> list[_Periodic]:
  """The periodic actions in the order they run: progress (every step), log, the gradient terms
  of a step that is not a log step, the negatives grid, the sample quality (process 0), and the
  checkpoint last, so that it is written only once the guard was read clean."""
  tc, info, is_image = setup.settings.train, setup.info, len(setup.info.shape) == 3
  gather = lambda x: multihost_utils.process_allgather(x, tiled=True)  # every process takes part

  actions = [_Periodic(1, progress),
             _Periodic(tc.log_every, functools.partial(_log, writer, tc.num_steps), syncs=True),
             _Periodic(tc.log_grad_terms_every,
                       lambda d: d.grad_terms and writer.write_scalars(d.step, d.grad_terms)),
             _Periodic(tc.image_every if is_image else 0, lambda d: writer.write_images(
                 d.step, {"negatives": images.make_grid(gather(d.negatives))[None]}))]
  if tc.eval_every > 0 and jax.process_index() == 0 and is_image:
    from ebm_jax.eval import quality as quality_lib  # pylint: disable=import-outside-toplevel
    quality = quality_lib.TrainingQuality(setup.settings, setup.model, info, files.cache_dir())
    clock = _TrainClock()  # started after the quality set-up (the FID statistics, a classifier)
    actions.append(_Periodic(tc.eval_every, functools.partial(_quality, quality, writer, clock)))
  return actions + [_Periodic(tc.checkpoint_every, lambda d: ckpt.save(d.step, d.state),
                              syncs=True, on_stop=True)]


def _log(writer: MetricWriter, num_steps: int, done: _Done) -> None:
  """The log action: the step's scalars with perf/steps_per_sec (and the gradient terms taken
  at this step) to metrics.jsonl and TensorBoard, and the console line."""
  scalars = {k: float(v) for k, v in done.metrics.items() if k != "finite"}
  scalars["perf/steps_per_sec"] = rate = done.rate
  writer.write_scalars(done.step, {**scalars, **done.grad_terms})
  done.grad_terms = {}  # taken along
  eta = datetime.timedelta(seconds=round((num_steps - done.step) / rate)) if rate > 0 else "?"
  logging.info("step %d/%d | loss %.4f | E+ %.4f E- %.4f | KL %.4f | %.2f steps/s | ETA %s",
               done.step, num_steps, scalars["loss"], scalars["energy_pos"],
               scalars["energy_neg"], scalars["loss_kl"], rate, eta)


class _TrainClock:
  """Wall minutes this process has trained for, the quality evaluations left out (the x-axis
  of FID against time): started when the loop's actions are built, compilation included."""

  def __init__(self):
    self.start, self.evaluating = time.time(), 0.0

  def minutes(self, now: float) -> float:
    return (now - self.start - self.evaluating) / 60


def _quality(quality, writer: MetricWriter, clock: _TrainClock, done: _Done) -> None:
  """The quality action (train.eval_every): EMA samples scored, logged and shown as a grid;
  the row carries quality/train_minutes (_TrainClock) beside the scores."""
  t, state = time.time(), done.state
  scalars, x = quality(done.step, *jax.device_get((state.ema_params, state.model_state)))
  scalars["quality/train_minutes"] = clock.minutes(t)
  clock.evaluating += time.time() - t
  writer.write_scalars(done.step, scalars)
  writer.write_images(done.step, {"quality_samples": images.make_grid(x)[None]})
  frechet = scalars.get("quality/frechet")
  fid = (f" | FID {scalars['quality/fid']:.1f} ({int(scalars['quality/fid_num'])} samples)"
         if "quality/fid" in scalars else "")
  logging.info("step %d quality | Fréchet %s | classes %s | mean pixel %.3f | saturated %.3f"
               "%s | %.0f s", done.step, "n/a" if frechet is None else f"{frechet:.1f}",
               int(scalars["quality/classes"]) if "quality/classes" in scalars else "n/a",
               scalars["quality/mean_pixel"], scalars["quality/saturated_frac"], fid,
               time.time() - t)


def _final_samples(setup: Setup, state: state_lib.TrainState, workdir: str) -> None:
  """EMA samples into WORKDIR/samples, from host copies: this process's devices alone sample."""
  settings, info, num = setup.settings, setup.info, setup.settings.sample.num
  variables = {"params": jax.device_get(state.ema_params), **jax.device_get(state.model_state)}
  labels = sampling.default_labels(num, info.num_classes)
  x, diag = sampling.for_model(settings, setup.model, info.shape).draw(
      jax.random.key(0), num, labels, variables)
  path = images.save_samples(x, os.path.join(workdir, "samples"), f"step_{int(state.step)}",
                             energy_per_step=diag["energy"], grad_norm_per_step=diag["grad_norm"],
                             **({} if labels is None else {"labels": labels.argmax(-1)}))
  logging.info("Samples from the EMA parameters: %s", path)
