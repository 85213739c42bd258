"""The one builder of programs that run the training chain, and the one place that decides how
that chain is compiled.

A chain program is three functions (`ChainFns`):
  start(state, batch) -> ChainStart          the chain starts (docs/algorithm.md, step 1),
  kernel(params, begun) -> Langevin kernel    one step of the chain on sg(θ) (step 2),
  finish(state, begun, final, infos) -> out   whatever follows the chain: the loss and update
                                              for the training step, the gradient terms for
                                              the decomposition (ebm_jax.analysis).
`build` turns them into one callable program(state, batch), in one of two forms chosen by
`policy` alone:
  - the chain inside one jitted program, a `lax.scan` with `unroll` steps per iteration
    (GPU and TPU; short chains on CPU);
  - the chain driven from the host (`HostChain`): a start program, one straight-line program
    per segment length called K / S times, and a finishing program. XLA:CPU runs this body's
    convolutions about twice as slowly inside a `while` loop as in straight-line code, and
    unrolling all K steps into one program compiles for minutes; a segment compiles once and
    runs at unrolled speed (measured in benchmarks/README.md, "Host-driven chain").
Both forms compute the same thing (equal up to float rounding): step k of the chain uses
fold_in(chain key, k) and σ_k of `langevin.noise_schedule` in either.
"""

import concurrent.futures
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ebm_jax import langevin, sharding

# Steps per host-dispatched segment on CPU when the chain is longer than this. Chains of up to
# this length stay inside the step program, fully unrolled (the small nets' K = 10 steps ran
# faster so: benchmarks/README.md, "Host-driven chain").
AUTO_SEGMENT = 10
# LLVM at -O1 for the host-driven programs on CPU: they compile faster at the same speed, while
# the small nets' one-program steps run faster at XLA's default level, so it is per program and
# not a global flag (benchmarks/README.md, "Host-driven chain"). A level the user's XLA_FLAGS
# set (--xla_backend_optimization_level) is left as they set it.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def cpu_compiler_options() -> dict[str, Any] | None:
  """CPU_COMPILER_OPTIONS, or None when XLA_FLAGS sets the backend's optimisation level."""
  if "--xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
    return None
  return dict(CPU_COMPILER_OPTIONS)


class Policy(NamedTuple):
  """How a chain of `num_steps` steps is compiled: every decision in one value."""
  segment: int  # steps per host-dispatched program; 0: the chain inside the one program
  unroll: int  # steps per loop iteration when the chain is inside a program
  compiler_options: dict[str, Any] | None  # for the host-driven programs


def policy(num_steps: int, unroll: int = 0, segment: int = -1,
           backend: str | None = None) -> Policy:
  """The compile policy of a chain (`langevin.unroll`, `langevin.host_segment`):
    segment −1 (auto): on CPU, chains longer than AUTO_SEGMENT run as host-dispatched segments
      of AUTO_SEGMENT steps; shorter chains, and every chain on GPU/TPU, stay in the program.
      A positive segment is taken as given (never longer than the chain); 0 keeps the chain in.
    unroll 0 (auto): the whole chain on CPU (XLA:CPU runs unrolled steps much faster than a
      rolled loop), a rolled loop (1) on GPU/TPU, where compile time would grow with K for no
      measured gain; a positive value is taken as given (at most the chain's length).
  The host-driven programs compile with `cpu_compiler_options()` on CPU."""
  on_cpu = (backend or jax.default_backend()) == "cpu"
  if segment < 0:
    segment = AUTO_SEGMENT if on_cpu and num_steps > AUTO_SEGMENT else 0
  segment = min(int(segment), num_steps)
  unroll = min(int(unroll), num_steps) if unroll else (num_steps if on_cpu else 1)
  return Policy(segment=segment, unroll=unroll,
                compiler_options=cpu_compiler_options() if on_cpu and segment else None)


class Chain(NamedTuple):
  """The chain's length and noise: σ_k = noise_scale × `langevin.noise_schedule`."""
  num_steps: int
  noise_scale: float
  anneal: bool = False

  def sigmas(self) -> np.ndarray:
    return np.asarray(langevin.noise_schedule(1.0, self.num_steps, self.anneal)
                      * self.noise_scale, np.float32)


class ChainFns(NamedTuple):
  """The three functions of a chain program (see the module docstring)."""
  start: Callable[..., Any]
  kernel: Callable[..., Any]
  finish: Callable[..., Any]


def run_in_program(fns: ChainFns, chain: Chain, unroll: int, state, batch):
  """start, the whole chain as a `lax.scan`, finish: the program's body, traceable anywhere."""
  begun = fns.start(state, batch)
  final, infos = langevin.run_chain(fns.kernel(state.params, begun), begun.chain_key, begun.x0,
                                    chain.num_steps, chain.noise_scale, chain.anneal,
                                    unroll=unroll)
  return fns.finish(state, begun, final, infos)


def build(fns: ChainFns, chain: Chain, chain_policy: Policy, mesh, in_shardings,
          out_shardings, donate_state: bool = False):
  """program(state, batch) -> finish's outputs, in the form `chain_policy` says: a jitted
  function (the chain inside it) or a `HostChain`. Either is compiled ahead of time by
  `compile(program, state, batch)`."""
  if not chain_policy.segment:
    return jax.jit(lambda state, batch: run_in_program(fns, chain, chain_policy.unroll, state,
                                                       batch),
                   in_shardings=in_shardings, out_shardings=out_shardings,
                   donate_argnums=0 if donate_state else ())
  return HostChain(fns, chain, chain_policy, mesh, in_shardings, out_shardings, donate_state)


def compile(program, state, batch):  # pylint: disable=redefined-builtin
  """A program of `build` compiled for these arguments (arrays, or ShapeDtypeStructs with
  shardings): JAX's `jax.stages.Compiled` for a jitted program, `HostChain.Compiled` for a host
  chain. Both are called as the program and have cost_analysis() and memory_analysis()."""
  if isinstance(program, HostChain):
    return program.compile(state, batch)
  return program.lower(state, batch).compile()


class HostChain:
  """program(state, batch), with the chain driven from the host as straight-line segments.

  Compiled on the first call for arguments of new shapes or shardings (`compile`; segments
  and the finishing program in parallel threads: XLA compiles without Python's lock), then
  run: start, the segments in turn (segment i starts at step `first`, so one program serves
  every segment of a length), finish."""

  def __init__(self, fns: ChainFns, chain: Chain, chain_policy: Policy, mesh, in_shardings,
               out_shardings, donate_state: bool):
    self.lengths = langevin.segment_lengths(chain.num_steps, chain_policy.segment)
    self.sigmas = chain.sigmas()
    self.options = chain_policy.compiler_options
    split = sharding.batch_sharded(mesh)
    # per-step infos (steps, B): the batch axis split like the chains
    self.info_sharding = NamedSharding(mesh, PartitionSpec(None, *split.spec))

    def segment_fn(params, begun, lstate, sigmas, first):
      return langevin.run_segment(fns.kernel(params, begun), begun.chain_key, lstate, sigmas,
                                  first)

    def finish(state, begun, final, infos):
      return fns.finish(state, begun, final, jax.tree.map(lambda *a: jnp.concatenate(a), *infos))

    self._start = jax.jit(fns.start, in_shardings=in_shardings)
    self._segment = jax.jit(segment_fn, out_shardings=(
        langevin.LangevinState(split, split),
        langevin.LangevinInfo(*[self.info_sharding] * len(langevin.LangevinInfo._fields))))
    self._finish = jax.jit(finish, out_shardings=out_shardings,
                           donate_argnums=0 if donate_state else ())
    self._compiled: dict[Any, HostChain.Compiled] = {}

  def __call__(self, state, batch):
    signature = tuple((a.shape, a.dtype, getattr(a, "sharding", None))
                      for a in jax.tree.leaves((state, batch)))
    if signature not in self._compiled:
      self._compiled[signature] = self.compile(state, batch)
    return self._compiled[signature](state, batch)

  def _cache_size(self) -> int:
    """How many argument signatures this program was compiled for (1 when nothing recompiled),
    under the name of the same count on a jitted function, so tests treat both forms alike."""
    return len(self._compiled)

  def compile(self, state, batch) -> "HostChain.Compiled":
    """The three kinds of program lowered and compiled with JAX's AOT API for these arguments."""
    start = self._start.lower(state, batch).compile(self.options)
    begun = _like(start.out_info, start.output_shardings)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=getattr(a, "sharding", None)),
                          state.params)
    lstate = langevin.init(begun.x0)
    lowered = {n: self._segment.lower(params, begun, lstate,
                                      jax.ShapeDtypeStruct((n,), np.float32), np.int32(0))
               for n in sorted(set(self.lengths))}
    infos = tuple(jax.tree.map(
        lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=self.info_sharding),
        lowered[n].out_info[1]) for n in self.lengths)
    lowered["finish"] = self._finish.lower(state, begun, lstate, infos)
    with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
      compiled = dict(zip(lowered, pool.map(lambda low: low.compile(self.options),
                                            lowered.values())))
    finish = compiled.pop("finish")
    return HostChain.Compiled(self, start, compiled, finish)

  class Compiled:
    """A HostChain's programs compiled for one signature: call it as the program."""

    def __init__(self, chain: "HostChain", start, segments: dict[int, Any], finish):
      self.chain, self.start, self.segments, self.finish = chain, start, segments, finish
      self.input_shardings = start.input_shardings

    def __call__(self, state, batch, on_phase: Callable[[str, Any], None] | None = None):
      """The step; `on_phase(name, outputs)`, when given, is called after each phase ("start",
      "chain" after the last segment, "finish") with its outputs, so a benchmark can wait for
      them and time the phases apart."""
      on_phase = on_phase or (lambda name, out: None)
      begun = self.start(state, batch)
      on_phase("start", begun)
      lstate, infos, first = langevin.init(begun.x0), [], 0
      for n in self.chain.lengths:
        lstate, info = self.segments[n](state.params, begun, lstate,
                                        self.chain.sigmas[first:first + n], np.int32(first))
        infos.append(info)
        first += n
      on_phase("chain", lstate)
      out = self.finish(state, begun, lstate, tuple(infos))
      on_phase("finish", out)
      return out

    def programs(self) -> list[Any]:
      """The compiled programs of one call, in the order they run (segments repeated)."""
      return [self.start, *(self.segments[n] for n in self.chain.lengths), self.finish]

    def memory_analysis(self):
      """XLA's memory analysis of the program with the most temporary memory (the programs run
      one after another, so theirs is the call's peak of temporaries)."""
      analyses = [c.memory_analysis() for c in [self.start, self.finish,
                                                *self.segments.values()]]
      analyses = [a for a in analyses if a is not None]
      return max(analyses, key=lambda a: a.temp_size_in_bytes) if analyses else None

    def cost_analysis(self) -> dict[str, float]:
      """XLA's cost analysis summed over one call's programs (FLOPs and bytes accessed), per
      device as for a single program."""
      total: dict[str, float] = {}
      for c in self.programs():
        cost = c.cost_analysis()
        cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
        for k in ("flops", "bytes accessed"):
          if k in cost:
            total[k] = total.get(k, 0.0) + float(cost[k])
      return total


def _like(out, shardings):
  """ShapeDtypeStructs of a compiled program's outputs, with their shardings."""
  return jax.tree.map(lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s),
                      out, shardings)
