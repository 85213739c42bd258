"""The training step with its Langevin chain driven from the host (`langevin.host_segment`).

The same step as `step.make_train_step` (same random numbers, same result up to float
rounding), run as three kinds of program instead of one:
  start    step 1 of docs/algorithm.md (chain starts),
  segment  S Langevin steps as straight-line code, called K / S times (a shorter one last),
  finish   steps 3-4 (buffer, loss, update), donating the state.
Why: XLA:CPU runs the chain's convolutions about twice as slowly inside a `while` loop as in
straight-line code, and unrolling all K steps of a long chain into one program takes minutes
to compile (measured in benchmarks/README.md, "Host-driven chain"; figures also in
docs/results.md). A segment compiles once and runs at unrolled speed; the host dispatches
K / S calls a step, each far cheaper to dispatch than the work it starts. GPU and TPU keep the
chain inside the one program.
"""

import concurrent.futures
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ebm_jax import langevin, sharding
from ebm_jax import step as step_lib


# LLVM at -O1 for these programs on CPU (the rest of the process keeps XLA's default): it
# shortens the long chains' compilation at the same step time, while the small nets'
# one-program steps run faster at the default level, so it is not a global flag (measured in
# benchmarks/README.md, "Host-driven chain": "LLVM -O1 for the host-step programs").
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
AUTO_SEGMENT = 10  # steps per segment program on CPU when the chain is longer than this


def resolve_segment(segment: int, num_steps: int, backend: str | None = None) -> int:
  """`langevin.host_segment` as steps per host-dispatched program (0: the chain inside the
  step program). −1 (auto): on CPU, chains of more than 10 steps run as segments of 10 (faster
  than a rolled loop, and compiled in far less time than a fully unrolled chain); chains of up
  to 10 steps stay inside the step, fully unrolled, which ran faster for the small nets than
  as one segment; 0 on GPU and TPU. Measured in benchmarks/README.md, "Host-driven chain"
  (figures also in docs/results.md)."""
  if segment < 0:
    on_cpu = (backend or jax.default_backend()) == "cpu"
    segment = AUTO_SEGMENT if on_cpu and num_steps > AUTO_SEGMENT else 0
  return min(segment, num_steps)


class HostChainStep:
  """step(state, batch) -> (state, metrics, negatives), like the jitted one-program step: it
  donates `state`, and has `lower(state, batch).compile()` for ahead-of-time compilation."""

  def __init__(self, config: ml_collections.ConfigDict, model, info, tx: optax.GradientTransformation,
               mesh, state_sharding, batch_sharding, segment: int):
    lc = config.langevin
    parts = step_lib.make_phase_parts(config, model, info, mesh)
    update = step_lib.make_update(config, model, tx)
    self.lengths = langevin.segment_lengths(lc.num_steps, segment)
    self.sigmas = np.asarray(langevin.noise_schedule(1.0, lc.num_steps, lc.anneal_noise)
                             * lc.noise_scale, np.float32)
    split, rep = sharding.batch_sharded(mesh), sharding.replicated(mesh)

    def segment_fn(params, begun, lstate, sigmas, first):
      kernel = step_lib.chain_kernel(config, parts.energy, params, begun)
      return langevin.run_segment(kernel, begun.chain_key, lstate, sigmas, first)

    def finish(state, begun, final, infos):
      infos = jax.tree.map(lambda *a: jnp.concatenate(a), *infos)
      return update(state, parts.finish(state, begun, final, infos))

    # per-step infos (steps, B): the batch axis split like the chains
    self.info_sharding = NamedSharding(mesh, PartitionSpec(None, *split.spec))
    self._start = jax.jit(parts.start, in_shardings=(state_sharding, batch_sharding))
    self._segment = jax.jit(segment_fn, out_shardings=(
        langevin.LangevinState(split, split),
        langevin.LangevinInfo(*[self.info_sharding] * len(langevin.LangevinInfo._fields))))
    self._finish = jax.jit(finish, out_shardings=(state_sharding, rep, split),
                           donate_argnums=0)
    self._compiled: dict[Any, "_Compiled"] = {}  # by the arguments' shapes and shardings

  def __call__(self, state, batch):
    """Compiles the programs ahead of time on the first call with arguments of new shapes
    (segments and the finishing program in parallel), then runs them."""
    signature = tuple((a.shape, a.dtype, getattr(a, "sharding", None))
                      for a in jax.tree.leaves((state, batch)))
    if signature not in self._compiled:
      self._compiled[signature] = self.lower(state, batch).compile()
    return self._compiled[signature](state, batch)

  def _run(self, start, segments, finish, state, batch):
    begun = start(state, batch)
    lstate, infos, first = langevin.init(begun.x0), [], 0
    for n in self.lengths:
      lstate, info = segments[n](state.params, begun, lstate, self.sigmas[first:first + n],
                                 np.int32(first))
      infos.append(info)
      first += n
    return finish(state, begun, lstate, tuple(infos))

  def lower(self, state, batch) -> "_Lowered":
    """Lowers the three programs for these arguments (arrays or ShapeDtypeStructs with
    shardings); `.compile()` on the result compiles them all."""
    return _Lowered(self, state, batch)

  def _cache_size(self) -> int:
    """How many times calls compiled the step's programs (1 when nothing recompiled)."""
    return len(self._compiled)


def _like(out, shardings):
  """ShapeDtypeStructs of a compiled program's outputs, with their shardings."""
  return jax.tree.map(lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s),
                      out, shardings)


class _Lowered:
  """A HostChainStep to compile for given arguments. `compile()` compiles the start program,
  then the segment programs and the finishing program in parallel threads: XLA compiles
  without Python's lock, so they take less wall time than compiled one after the other
  (benchmarks/README.md, "Host-driven chain")."""

  def __init__(self, step: HostChainStep, state, batch):
    self.step, self.state, self.batch = step, state, batch

  def compile(self) -> "_Compiled":
    step, state = self.step, self.state
    # pylint: disable=protected-access
    options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    start = step._start.lower(state, self.batch).compile(options)
    begun = _like(start.out_info, start.output_shardings)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=getattr(a, "sharding", None)),
                          state.params)
    lstate = langevin.init(begun.x0)
    lowered = {n: step._segment.lower(params, begun, lstate,
                                      jax.ShapeDtypeStruct((n,), np.float32), np.int32(0))
               for n in sorted(set(step.lengths))}
    infos = tuple(jax.tree.map(
        lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=step.info_sharding),
        lowered[n].out_info[1]) for n in step.lengths)
    lowered["finish"] = step._finish.lower(state, begun, lstate, infos)
    with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
      compiled = dict(zip(lowered, pool.map(lambda low: low.compile(options),
                                            lowered.values())))
    finish = compiled.pop("finish")
    return _Compiled(step, start, compiled, finish)


class _Compiled:
  """A HostChainStep's programs compiled ahead of time: call it as the step."""

  def __init__(self, step: HostChainStep, start, segments: dict[int, Any], finish):
    self.step, self.start, self.segments, self.finish = step, start, segments, finish
    self.input_shardings = start.input_shardings

  def __call__(self, state, batch):
    return self.step._run(self.start, self.segments, self.finish, state, batch)  # pylint: disable=protected-access

  def memory_analysis(self):
    """XLA's memory analysis of the program with the most temporary memory (the programs run
    one after another, so theirs is the step's peak of temporaries)."""
    analyses = [c.memory_analysis() for c in [self.start, self.finish, *self.segments.values()]]
    analyses = [a for a in analyses if a is not None]
    return max(analyses, key=lambda a: a.temp_size_in_bytes) if analyses else None

  def cost_analysis(self) -> dict[str, float]:
    """XLA's cost analysis summed over one step's program calls (FLOPs and bytes accessed),
    per device as for a single program."""
    calls = [self.start, self.finish] + [self.segments[n] for n in self.step.lengths]
    total: dict[str, float] = {}
    for c in calls:
      cost = c.cost_analysis()
      cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
      for k in ("flops", "bytes accessed"):
        if k in cost:
          total[k] = total.get(k, 0.0) + float(cost[k])
    return total
