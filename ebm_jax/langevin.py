"""Langevin dynamics as pure kernels and `lax.scan` chains (blackjax-shaped).

One step, with the reference semantics (reference description §1.3):
    x̃ = x + σ ε,   g = ∇ₓ Σ_b Ē(x̃_b),   x' = clip(x̃ − λ g, 0, 1)
where Ē is the energy summed over heads and the gradient is of the sum over the batch, so each
sample moves along its own gradient. The noise is added *before* the gradient; there is no
√(2λ) coupling between λ and σ unless the caller chooses it (textbook Langevin: σ² = 2λ).

MALA (`sampler="mala"`) turns the same gradient step into a Metropolis-Hastings proposal:
    x' = x − λ ∇ₓĒ(x) + σ ε,   accepted with probability
    min(1, exp(−(Ē(x') − Ē(x))/T) q(x | x') / q(x' | x)),   q(a | b) = N(a; b − λ∇Ē(b), σ²),
which leaves exp(−Ē/T) invariant exactly, with T = σ²/(2λ) the temperature this λ and σ imply
(T = 1 for textbook Langevin). With clip_x the target is restricted to the box: proposals
outside it are rejected, never clipped. A MALA step costs two energy gradients.

HMC (`sampler="hmc"`) targets the same exp(−Ē/T), T = σ²/(2λ): each step draws a unit
momentum and takes `leapfrog_steps` leapfrog steps of size σ on U = Ē/T, then accepts or rejects
per chain (blackjax.mcmc.hmc: its velocity-Verlet integrator and Metropolis correction, vmapped
over the batch). With one leapfrog step the proposal is MALA's, x − λ∇Ē + σε; longer
trajectories move further per accepted step. The box is a hard wall: the target is −∞ outside
it (the trajectory may cross it, the proposal is rejected if it ends outside). A step costs
leapfrog_steps + 1 energy gradients.

Both decide on −ΔĒ/T computed in float32: each Ē carries a rounding error of up to |Ē|·2⁻²⁴,
so at small T the decision is float rounding, not the target (at the image configs'
T = 0.001²/(2·100) = 5·10⁻⁹ an energy of 10 is uncertain by ~100 nats). MALA and HMC are
therefore refused below MIN_METROPOLIS_TEMPERATURE = 10⁻³, where energies up to |Ē| = 100 keep
the error of the log-ratio below 0.012 nats (`check_metropolis_temperature`).

Nothing here is logged: kernels return (state, info) and chains return the stacked infos.
Kernels are differentiable functions of the energy's parameters, so the same code serves the
stop-gradient training chain and the L_opt-through-all-steps ablation (paper A.4).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ebm_jax.errors import UserError

# energy_fn(x) -> (B, S) energies for a batch x; parameters are closed over.
EnergyFn = Callable[[jax.Array], jax.Array]
XRange = tuple[float, float] | None


class LangevinState(NamedTuple):
  x: jax.Array  # current samples (B, ...)
  x_noised: jax.Array  # x̃ of the step that produced x (the KL sample is rebuilt from it)


class LangevinInfo(NamedTuple):
  energy: jax.Array  # (B,) head-summed energy at the noised point x̃ (MALA: at x)
  grad_norm: jax.Array  # (B,) L2 norm of ∇ₓ Ē(x̃), before any clipping (MALA: at x)
  accepted: jax.Array  # (B,) 1.0 where the step was taken (always, for unadjusted Langevin)

SAMPLERS = ("ula", "mala", "hmc")
MIN_METROPOLIS_TEMPERATURE = 1e-3  # module docstring


def temperature(step_size: float, noise_scale: float) -> float:
  """T = σ²/(2λ): the temperature of exp(−Ē/T) that a λ, σ step targets."""
  return noise_scale ** 2 / (2.0 * step_size)


def check_metropolis_temperature(sampler: str, step_size: float, noise_scale: float,
                                 where: str = "langevin.step_size") -> None:
  """Refuses MALA/HMC where float32 rounding of Ē, not the target, decides acceptance."""
  if sampler not in ("mala", "hmc") or noise_scale <= 0:
    return
  t = temperature(step_size, noise_scale)
  if t < MIN_METROPOLIS_TEMPERATURE:
    raise UserError(
        f"langevin.sampler={sampler!r} at T = sigma^2/(2 lambda) = {t:.3g} (lambda = {where} = "
        f"{step_size:g}, sigma {noise_scale:g}): below T = {MIN_METROPOLIS_TEMPERATURE:g} float32 rounding of "
        "the energy, not the target, decides the Metropolis test; use sampler='ula' or a "
        "larger sigma^2 / (2 lambda)")


def box(clip_x: bool) -> "XRange":
  """The x_range of langevin.clip_x: samples kept in [0, 1] (images), or unbounded (2-D)."""
  return (0.0, 1.0) if clip_x else None


def init(x: jax.Array) -> LangevinState:
  return LangevinState(x=x, x_noised=x)


def summed_energy_and_grad(energy_fn: EnergyFn, x: jax.Array):
  """Per-sample head-summed energies (B,) and ∇ₓ of their batch sum (each row its own)."""
  def total(z):
    e = energy_fn(z).sum(axis=-1)
    return e.sum(), e
  grad, energy = jax.grad(total, has_aux=True)(x)
  return energy, grad


def gradient_step(energy_fn: EnergyFn, x_noised: jax.Array, step_size: float,
                  grad_clip: float = 0.0, x_range: XRange = (0.0, 1.0)):
  """The deterministic half of a step: clip(x̃ − λ ∇ₓĒ(x̃)). Returns (x', info)."""
  energy, grad = summed_energy_and_grad(energy_fn, x_noised)
  grad_norm = jnp.sqrt(jnp.sum(grad.reshape(grad.shape[0], -1) ** 2, axis=-1))
  if grad_clip > 0:  # IGEBM's proj_norm: elementwise clamp of the gradient
    grad = jnp.clip(grad, -grad_clip, grad_clip)
  x_new = x_noised - step_size * grad
  if x_range is not None:
    x_new = jnp.clip(x_new, *x_range)
  return x_new, LangevinInfo(energy=energy, grad_norm=grad_norm,
                             accepted=jnp.ones_like(energy))


def build_kernel(energy_fn: EnergyFn, step_size: float, grad_clip: float = 0.0,
                 x_range: XRange = (0.0, 1.0), sampler: str = "ula", leapfrog_steps: int = 1):
  """Returns kernel(key, state, noise_scale) -> (state, info) for `sampler` ("ula": the
  reference's unadjusted step; "mala": Metropolis-adjusted; "hmc": Hamiltonian Monte Carlo with
  `leapfrog_steps` per proposal; see the module docstring)."""
  if sampler == "mala":
    return build_mala_kernel(energy_fn, step_size, grad_clip, x_range)
  if sampler == "hmc":
    if grad_clip > 0:
      raise ValueError("HMC uses the exact gradient: langevin.grad_clip must be 0")
    return build_hmc_kernel(energy_fn, step_size, x_range, leapfrog_steps)
  if sampler != "ula":
    raise ValueError(f"langevin.sampler={sampler!r} is not one of {list(SAMPLERS)}")

  def kernel(key: jax.Array, state: LangevinState, noise_scale: jax.Array | float):
    x_noised = state.x + noise_scale * row_normal(key, state.x)
    x_new, info = gradient_step(energy_fn, x_noised, step_size, grad_clip, x_range)
    return LangevinState(x=x_new, x_noised=x_noised), info

  return kernel


def kernel(energy_fn: EnergyFn, chain):
  """build_kernel for a `settings.ChainSettings`: the one way a chain's settings become its
  kernel (training chain, the loss's x̂ replay, the test-time sampler)."""
  check_metropolis_temperature(chain.sampler, chain.step_size, chain.noise_scale)
  return build_kernel(energy_fn, chain.step_size, chain.grad_clip, box(chain.clip_x),
                      chain.sampler, chain.leapfrog_steps)


def inside(x: jax.Array, x_range: XRange) -> jax.Array:
  """Per row of x (B, ...): every coordinate within x_range (always, when unbounded)."""
  flat = x.reshape(x.shape[0], -1)
  if x_range is None:
    return jnp.ones(flat.shape[0], bool)
  return jnp.all((flat >= x_range[0]) & (flat <= x_range[1]), axis=-1)


def build_mala_kernel(energy_fn: EnergyFn, step_size: float, grad_clip: float = 0.0,
                      x_range: XRange = (0.0, 1.0)):
  """Metropolis-adjusted Langevin. The state's x_noised is the point the step started from,
  so the KL sample (one differentiable gradient step from it) is the proposal's mean."""

  def drift(x):
    energy, grad = summed_energy_and_grad(energy_fn, x)
    grad_norm = jnp.sqrt(jnp.sum(grad.reshape(grad.shape[0], -1) ** 2, axis=-1))
    if grad_clip > 0:
      grad = jnp.clip(grad, -grad_clip, grad_clip)
    return energy, grad_norm, x - step_size * grad

  def sq_norm(v):
    return jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=-1)

  def kernel(key: jax.Array, state: LangevinState, noise_scale: jax.Array | float):
    k_prop, k_accept = jax.random.split(key)
    x = state.x
    e_x, grad_norm, mean_x = drift(x)
    proposal = mean_x + noise_scale * row_normal(k_prop, x)
    e_p, _, mean_p = drift(proposal)
    var = jnp.square(noise_scale)
    temperature = var / (2.0 * step_size)
    log_ratio = (-(e_p - e_x) / temperature
                 - sq_norm(x - mean_p) / (2 * var) + sq_norm(proposal - mean_x) / (2 * var))
    accept = jnp.log(jax.random.uniform(k_accept, e_x.shape)) < log_ratio
    accept &= inside(proposal, x_range)  # outside the box: rejected, never clipped
    x_new = jnp.where(accept.reshape((-1,) + (1,) * (x.ndim - 1)), proposal, x)
    return (LangevinState(x=x_new, x_noised=x),
            LangevinInfo(energy=e_x, grad_norm=grad_norm, accepted=accept.astype(e_x.dtype)))

  return kernel


def build_hmc_kernel(energy_fn: EnergyFn, step_size: float, x_range: XRange = (0.0, 1.0),
                     leapfrog_steps: int = 1):
  """Hamiltonian Monte Carlo on exp(−Ē/T), T = σ²/(2λ), through blackjax.mcmc.hmc (unit mass,
  leapfrog step σ). Rows are independent chains: row i uses fold_in(key, i). The state's
  x_noised is the point the step started from, as for MALA."""
  import blackjax  # pylint: disable=import-outside-toplevel  (its import starts jax's backend)
  hmc = blackjax.mcmc.hmc.build_kernel()

  def kernel(key: jax.Array, state: LangevinState, noise_scale: jax.Array | float):
    x = state.x
    shape = x.shape[1:]
    temperature = jnp.square(noise_scale) / (2.0 * step_size)

    def log_density(flat):  # one chain, flattened
      z = flat.reshape(shape)
      value = -energy_fn(z[None]).sum() / temperature
      return jnp.where(inside(z[None], x_range)[0], value, -jnp.inf)

    def one_chain(k, flat):
      start = blackjax.mcmc.hmc.init(flat, log_density)
      new, info = hmc(k, start, log_density, noise_scale, jnp.ones_like(flat), leapfrog_steps)
      grad_norm = jnp.sqrt(jnp.sum(jnp.square(start.logdensity_grad))) * temperature
      return new.position, -start.logdensity * temperature, grad_norm, info.is_accepted

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
    flat, energy, grad_norm, accepted = jax.vmap(one_chain)(keys, x.reshape(x.shape[0], -1))
    return (LangevinState(x=flat.reshape(x.shape), x_noised=x),
            LangevinInfo(energy=energy, grad_norm=grad_norm,
                         accepted=accepted.astype(energy.dtype)))

  return kernel


def row_normal(key: jax.Array, x: jax.Array) -> jax.Array:
  """N(0, I) noise shaped like x whose row i depends only on (key, i): the first n rows are
  the same whether the chain runs on n or on B rows, so a chain can be replayed on a prefix."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), x.shape[1:], x.dtype)
                  )(jnp.arange(x.shape[0]))


def noise_schedule(noise_scale: float, num_steps: int, anneal: bool = False) -> jax.Array:
  """σ_k for k = 1..K: constant, or σ (K − k)/K when annealed (ref §1.3 `anneal`)."""
  if not anneal:
    return jnp.full((num_steps,), noise_scale, jnp.float32)
  k = jnp.arange(1, num_steps + 1, dtype=jnp.float32)
  return noise_scale * (num_steps - k) / num_steps


def run_chain(kernel, key: jax.Array, x0: jax.Array, num_steps: int,
              noise_scale: float | jax.Array, anneal: bool = False, remat: bool = False,
              unroll: int | bool = 1):
  """K kernel steps under `lax.scan`. Returns (final state, infos with leading axis K).

  The k-th step uses `fold_in(key, k)`, so a chain is a pure function of (key, x0) and can be
  replayed exactly (the all-steps KL ablation does so inside the loss). `remat` recomputes
  each step in the backward pass instead of storing its activations. `unroll` steps are
  unrolled per loop iteration (True: all); XLA:CPU runs unrolled steps faster than a rolled
  loop (docs/results.md, "Speed figures behind the code's CPU rules") at the price of compile
  time growing with the unrolled length.
  """
  sigmas = noise_schedule(1.0, num_steps, anneal) * noise_scale

  def body(state, k_sigma):
    k, sigma = k_sigma
    return kernel(jax.random.fold_in(key, k), state, sigma)

  if remat:
    body = jax.checkpoint(body)
  return jax.lax.scan(body, init(x0), (jnp.arange(num_steps), sigmas), unroll=unroll)


def run_segment(kernel, key: jax.Array, state: LangevinState, sigmas: jax.Array,
                first: jax.Array | int):
  """Steps first, ..., first + len(sigmas) − 1 of a `run_chain` chain as straight-line code
  (no loop), from `state`: the k-th step uses fold_in(key, k) and σ = sigmas[k − first], so
  running a chain's segments in turn gives exactly its `run_chain` result. Returns (state,
  infos with leading axis len(sigmas)). `first` may be traced: one program serves every
  segment of a length."""
  infos = []
  one_step = jax.jit(kernel)  # traced once, inlined len(sigmas) times by XLA
  for i in range(sigmas.shape[0]):
    state, info = one_step(jax.random.fold_in(key, first + i), state, sigmas[i])
    infos.append(info)
  return state, jax.tree.map(lambda *a: jnp.stack(a), *infos)


def segment_lengths(num_steps: int, segment: int) -> list[int]:
  """A K-step chain cut into segments of `segment` steps, the last one shorter if needed."""
  full, rest = divmod(num_steps, segment)
  return [segment] * full + ([rest] if rest else [])


def test_chain_segments(num_blocks: int, block_steps: int,
                        final_steps: int) -> list[tuple[int, bool]]:
  """The test-time chain (paper §2.3, docs/reference.md §5) as segments (steps, transition
  after): num_blocks × (block_steps Langevin steps, then one augmentation transition of the
  batch), then final_steps plain steps in pieces of at most block_steps. The sampler compiles
  one program per distinct segment length and runs the segments in turn: XLA:CPU runs a fully
  unrolled segment several times faster than the same steps in a rolled loop, and unrolling
  all of a long chain would take minutes to compile (benchmarks/README.md, "Against the
  authors' PyTorch code": "The test-time chain, too")."""
  segments = [(block_steps, True)] * num_blocks if block_steps else []
  piece = block_steps or final_steps
  done = 0
  while done < final_steps:
    segments.append((min(piece, final_steps - done), False))
    done += segments[-1][0]
  return segments
