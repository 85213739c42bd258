"""The one test-time sampler: an energy function and typed chain settings in, samples out.

Paper §2.3 (arXiv:2012.01316; docs/reference.md §5): chains start from uniform noise and run
num_blocks × (block_steps Langevin steps + one augmentation transition of the batch), then
final_steps plain steps. The energy is an argument (blackjax's shape), so one sampler serves a
trained model (`sample`, `ebm_jax.load`), a composition of models (`compose`), evaluation along
a chain (`evaluate quality --eval_every`) and the training loop's quality hook.

  chain = sampling.settings_from_config(settings)             # or TestChain(...) by hand
  sampler = sampling.Sampler(sampling.model_energy(model), chain, shape=(28, 28, 1))
  x, diagnostics = sampler.draw(key, 64, variables=variables)  # compiled once, reused

energy_fn(variables, x, y) -> (B, S) energies (y: one-hot labels or None). Chains run in
batches of `batch_size`, each as segments of unrolled steps (langevin.test_chain_segments):
one compilation per segment length and Sampler.
"""

import dataclasses
import functools
import time
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_jax import augment as augment_lib
from ebm_jax import chain_program, langevin
from ebm_jax import settings as settings_lib

EnergyFn = Callable[..., jax.Array]  # (variables, x, y) -> (B, S)
Transition = Callable[[jax.Array, jax.Array], jax.Array]  # (key, batch) -> batch


class TestChain(NamedTuple):
  """The test-time chain (hashable: a static jit argument): `chain`'s kernel — the training
  chain's settings with the test-time λ — run num_blocks × (block_steps steps + one
  augmentation transition), then final_steps plain steps, from U(noise_range) starts."""
  chain: settings_lib.ChainSettings
  num_blocks: int  # blocks of block_steps Langevin steps, each followed by a transition
  block_steps: int
  final_steps: int  # plain steps at the end
  noise_range: tuple[float, float] = (0.0, 1.0)  # chains start as U(lo, hi)

  @property
  def num_steps(self) -> int:
    return self.num_blocks * self.block_steps + self.final_steps


def settings_from_config(settings: settings_lib.Settings, *, steps: int | None = None,
                         step_size: float | None = None,
                         block_steps: int | None = None) -> TestChain:
  """settings.sample's chain (λ from sample.step_size, else langevin.step_size). `steps`
  (total) overrides the length: the last min(final_steps, steps) are plain, the rest are
  blocks. `settings` may also be a ConfigDict (`settings.of`)."""
  settings = settings_lib.of(settings)
  s = settings.sample
  block = s.block_steps if block_steps is None else block_steps
  num_blocks, final = s.num_blocks, s.final_steps
  if steps is not None:
    final = min(final, steps)
    num_blocks = (steps - final) // max(block, 1)
    final = steps - num_blocks * block
  if step_size is None:
    step_size = s.step_size if s.step_size > 0 else settings.langevin.step_size
  return TestChain(chain=dataclasses.replace(settings.langevin, step_size=float(step_size)),
                   num_blocks=int(num_blocks), block_steps=int(block), final_steps=int(final),
                   noise_range=tuple(float(v) for v in settings.buffer.noise_range))


def transition_from_config(settings: settings_lib.Settings, shape: tuple[int, ...],
                           augment: bool | None = None) -> Transition | None:
  """The batched augmentation transition of settings.augment for images (None for flat data,
  or when settings.sample.augment / `augment` says no)."""
  settings = settings_lib.of(settings)
  use = settings.sample.augment if augment is None else augment
  if not use or len(shape) != 3:
    return None
  return functools.partial(augment_lib.augment_batch,
                           augment_lib.make_transition(settings.augment))


class Sampler:
  """The test-time chain for `energy_fn(variables, x, y) -> (B, S)`, compiled once: call
  `draw(key, num, labels, variables)` as often as needed (new parameters are an argument, not a
  recompilation). `variables` is whatever energy_fn takes (a model's variables, a tuple of
  them for a composition, or None when energy_fn closes over its own)."""

  def __init__(self, energy_fn: EnergyFn, settings: TestChain, shape: tuple[int, ...],
               transition: Transition | None = None, batch_size: int = 64):
    self.settings, self.shape, self.batch_size = settings, tuple(shape), int(batch_size)

    self.segments = langevin.test_chain_segments(settings.num_blocks, settings.block_steps,
                                                 settings.final_steps)

    # One program per segment length (the transition is switched by a traced flag), so a
    # chain of blocks and final pieces of the same length compiles once.
    @functools.partial(jax.jit, static_argnums=(4,))
    def segment(variables, key, x, y, steps: int, transition_after: jax.Array):
      kernel = langevin.kernel(lambda v: energy_fn(variables, v, y), settings.chain)
      k_chain, k_aug = jax.random.split(key)
      state, info = langevin.run_chain(kernel, k_chain, x, steps, settings.chain.noise_scale,
                                       unroll=chain_program.policy(steps).unroll)
      x = state.x
      if transition is not None:
        x = jax.lax.cond(transition_after, lambda z: transition(k_aug, z), lambda z: z, x)
      return x, info

    self._segment = segment

  def _run(self, variables, key: jax.Array, x: jax.Array, y):
    """The whole test-time chain from x: its segments in turn, infos concatenated."""
    infos = []
    for i, (steps, transition_after) in enumerate(self.segments):
      x, info = self._segment(variables, jax.random.fold_in(key, i), x, y, steps,
                              jnp.asarray(transition_after))
      infos.append(info)
    if not infos:
      return x, langevin.LangevinInfo(*(jnp.zeros((0, x.shape[0])),) * len(
          langevin.LangevinInfo._fields))
    return x, jax.tree.map(lambda *a: jnp.concatenate(a), *infos)

  def starts(self, key: jax.Array, num: int, labels: np.ndarray | None):
    """Uniform-noise starts and labels in batches (the last padded to the batch size)."""
    if num < 1:
      raise ValueError(f"num={num} must be at least 1")
    batch = min(self.batch_size, num)
    lo, hi = self.settings.noise_range
    xs, ys = [], []
    for i in range(0, num, batch):
      xs.append(jax.random.uniform(jax.random.fold_in(key, i), (batch,) + self.shape,
                                   minval=lo, maxval=hi))
      ys.append(None if labels is None else
                jnp.asarray(np.resize(labels[i:i + batch], (batch,) + labels.shape[1:])))
    return xs, ys

  def continue_chains(self, variables, key: jax.Array, xs: list, ys: list):
    """One run of the settings' blocks and final steps from the batches xs (replaced). With
    more than one batch, a progress line (absl INFO) after each: chains done, time, ETA."""
    infos, times = [], [time.time()]
    for b in range(len(xs)):
      xs[b], info = self._run(variables, jax.random.fold_in(key, b), xs[b], ys[b])
      infos.append(info)
      if len(xs) > 1:
        jax.block_until_ready(xs[b])
        times.append(time.time())
        # the first batch may include compilation: the ETA uses the later ones when it can
        per_batch = (times[-1] - times[1]) / b if b else times[1] - times[0]
        logging.info("sampling: %d/%d batches of %d chains x %d steps, %.0f s, ETA %.0f s",
                     b + 1, len(xs), len(xs[b]), self.settings.num_steps,
                     times[-1] - times[0], per_batch * (len(xs) - b - 1))
    return infos

  def draw(self, key: jax.Array, num: int, labels: np.ndarray | None = None,
           variables=None) -> tuple[np.ndarray, dict]:
    """`num` samples. Returns (samples, diagnostics): the mean over chains, per step, of the
    energy, the ∇ₓE norm and the acceptance (1 for ULA)."""
    start_key, chain_key = jax.random.split(key)
    xs, ys = self.starts(start_key, num, labels)
    infos = jax.device_get(self.continue_chains(variables, chain_key, xs, ys))
    per_step = {name: np.concatenate([getattr(i, field) for i in infos], 1)[:, :num].mean(1)
                for name, field in (("energy", "energy"), ("grad_norm", "grad_norm"),
                                    ("accept_rate", "accepted"))}
    return np.concatenate([np.asarray(x) for x in xs])[:num], per_step


def draw(energy_fn: EnergyFn, settings: TestChain, key: jax.Array, num: int,
         shape: tuple[int, ...], labels: np.ndarray | None = None, *, variables=None,
         batch_size: int = 64, transition: Transition | None = None
         ) -> tuple[np.ndarray, dict]:
  """`num` samples by the test-time chain in one call (see Sampler.draw)."""
  return Sampler(energy_fn, settings, shape, transition, batch_size).draw(key, num, labels,
                                                                          variables)


def along_chain(energy_fn: EnergyFn, settings: TestChain, key: jax.Array, num: int,
                shape: tuple[int, ...], labels: np.ndarray | None = None, *, steps: int,
                every: int, variables=None, batch_size: int = 64,
                transition: Transition | None = None
                ) -> Iterator[tuple[int, np.ndarray, float]]:
  """One long chain of `steps` steps (a transition every settings.block_steps steps), yielding
  (steps done, samples, mean energy) every `every` steps (paper Fig. 7/8)."""
  if every < 1 or steps < every:
    raise ValueError(f"every={every} must be >= 1 and steps={steps} >= every")
  block = max(settings.block_steps, 1)
  sampler = Sampler(energy_fn, settings._replace(num_blocks=every // block, block_steps=block,
                                                 final_steps=every % block),
                    shape, transition, batch_size)
  start_key, chain_key = jax.random.split(key)
  xs, ys = sampler.starts(start_key, num, labels)
  for done in range(every, steps + 1, every):
    infos = sampler.continue_chains(variables, jax.random.fold_in(chain_key, done), xs, ys)
    energy = np.concatenate([np.asarray(i.energy[-1]) for i in infos])[:num]
    yield done, np.concatenate([np.asarray(x) for x in xs])[:num], float(energy.mean())


def model_energy(model) -> EnergyFn:
  """energy_fn(variables, x, y) of a Flax energy net: model.apply(variables, x, y)."""
  return lambda variables, x, y: model.apply(variables, x, y)


def for_model(settings: settings_lib.Settings, model, shape: tuple[int, ...], *,
              steps: int | None = None, augment: bool | None = None,
              batch_size: int | None = None) -> Sampler:
  """The test-time sampler of settings.sample for a Flax energy net (variables per call)."""
  settings, shape = settings_lib.of(settings), tuple(shape)
  return Sampler(model_energy(model), settings_from_config(settings, steps=steps), shape,
                 transition_from_config(settings, shape, augment),
                 batch_size or settings.sample.batch_size)


def default_labels(num: int, num_classes: int, label: int = -1) -> np.ndarray | None:
  """One-hot labels: all `label`, or cycling through the classes when label < 0 (None for an
  unconditional model)."""
  if num_classes == 0:
    return None
  idx = np.full(num, label) if label >= 0 else np.arange(num) % num_classes
  return np.eye(num_classes, dtype=np.float32)[idx]
