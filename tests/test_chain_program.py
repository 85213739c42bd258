"""The one builder of chain programs (ebm_jax/chain_program.py): its compile policy, and the
gradient decomposition built by it in both forms (the chain inside one program, and driven from
the host), which must report the same terms as each other and as an in-process recomputation."""

import jax
import numpy as np
import pytest

from ebm_jax import analysis, chain_program, train
from test_train import tiny_config


def test_policy_decides_every_compile_choice(monkeypatch):
  p = chain_program.policy
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=false")
  # segments: auto on CPU for chains longer than AUTO_SEGMENT, never on GPU/TPU
  assert p(40, backend="cpu").segment == chain_program.AUTO_SEGMENT
  assert p(11, backend="cpu").segment == chain_program.AUTO_SEGMENT
  assert p(10, backend="cpu").segment == 0  # short chains: inside the step
  assert p(40, backend="gpu").segment == 0 and p(40, backend="tpu").segment == 0
  assert p(40, segment=0, backend="cpu").segment == 0
  assert p(40, segment=8, backend="gpu").segment == 8
  assert p(3, segment=5, backend="cpu").segment == 3  # never longer than the chain
  # unroll: the whole chain on CPU, a rolled loop on GPU/TPU, a given value capped at K
  assert p(40, backend="cpu").unroll == 40
  assert p(40, backend="gpu").unroll == 1 and p(40, backend="tpu").unroll == 1
  assert p(40, unroll=8, backend="cpu").unroll == 8 and p(40, unroll=100, backend="gpu").unroll == 40
  # compiler options only for host-driven programs on CPU
  assert p(40, backend="cpu").compiler_options == chain_program.CPU_COMPILER_OPTIONS
  assert p(10, backend="cpu").compiler_options is None
  assert p(40, segment=8, backend="gpu").compiler_options is None
  # a level the user's XLA_FLAGS set is theirs (the suite's -O0, conftest.py)
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert p(40, backend="cpu").compiler_options is None


def _config(segment: int):
  c = tiny_config("digits")
  c.langevin.num_steps = 3  # with segments of 2: a 2-step and a 1-step program
  c.langevin.host_segment = segment
  c.langevin.anneal_noise = True  # σ differs per step: a slicing error would show
  c.loss.kl_samples = 4
  c.loss.ent_min_buffer = 0  # the entropy term acts at once
  return c


@pytest.mark.slow  # every term's gradient compiled twice (~1.3 min)
def test_gradient_decomposition_runs_on_the_host_chain_and_agrees():
  """The decomposition of a host-chain config is a HostChain (no fully unrolled chain in one
  program), and its norms equal those of each term's gradient recomputed with the chain inside
  one traced function (analysis.term_gradients, the in-program form checked in
  tests/test_analysis.py)."""
  setup = train.Setup(_config(2))
  assert isinstance(setup.decompose_fn, chain_program.HostChain)
  assert setup.decompose_fn.lengths == [2, 1]
  state = setup.init_state()
  batch = setup.global_batch(next(setup.stream(0)))
  got = jax.device_get(setup.decompose_fn(state, batch))
  grads = jax.device_get(jax.jit(lambda s, b: analysis.term_gradients(
      setup.config, setup.model, setup.info, s, b))(state, batch))
  norm = lambda t: float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64))
                                     for v in jax.tree.leaves(t))))
  for term in ("cd", "reg", "opt", "ent", "kl", "total"):
    np.testing.assert_allclose(got[f"{analysis.PREFIX}norm_{term}"], norm(grads[term]),
                               rtol=2e-4, err_msg=term)
  assert got[f"{analysis.PREFIX}norm_ent"] > 0  # the entropy term acted
  flat = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)]).astype(np.float64)
  kl, cd = flat(grads["kl"]), flat(grads["cd"])
  np.testing.assert_allclose(got[f"{analysis.PREFIX}cos_kl_cd"],
                             kl @ cd / (np.linalg.norm(kl) * np.linalg.norm(cd)), rtol=1e-3,
                             atol=1e-5)


def test_compile_gives_the_host_chain_ahead_of_time():
  """chain_program.compile of a host chain: JAX's compiled programs, called as the step, with
  the same result as the step's own first call, and XLA's analyses summed over its parts."""
  setup = train.Setup(_config(2))
  state = setup.init_state()
  batch = setup.global_batch(next(setup.stream(0)))
  compiled = chain_program.compile(setup.step_fn, state, batch)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] > 0 and compiled.memory_analysis() is not None
  got = jax.device_get(compiled(state, batch))
  want = jax.device_get(setup.step_fn(setup.init_state(), batch))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
