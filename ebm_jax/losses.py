"""The ICD objective as pure functions (paper §2, reference description §1.4-1.6).

    L = L_CD + L_reg + L_opt + L_ent,   L_KL = L_opt + L_ent

with θ the parameters and sg = `jax.lax.stop_gradient`:
  L_CD  = mean E_θ(x⁺) − mean E_θ(sg x⁻)                       (paper Eq. 4)
  L_reg = α (mean E_θ(x⁺)² + mean E_θ(sg x⁻)²)                  (ref §1.5)
  x̂     = clip(sg x̃_{K−1} − λ ∇ₓ Σ Ē_θ(sg x̃_{K−1}), 0, 1)      (last step, differentiable in θ)
  L_opt = c_opt · mean E_{sg θ}(x̂)                              (paper Eq. 6)
  L_ent = −c_ent · mean_i log NN(x̂_i, sg B)                    (paper Eq. 7, ref §1.5)
Means run over the batch and the heads (E has shape (B, S)); samplers use the head sum.
With loss.kl_form = "right" both KL terms change sign (critique §5.4.1: CD's derivation
minimises −KL, pushing the chain's distribution away from the model's; the paper minimises the
KL itself). Whatever the sampler, x̂ is one noiseless gradient step from the chain's last
input: for MALA it is the proposal's drift, for HMC with more than one leapfrog step it is not
the chain's transition.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from ebm_jax import langevin
from ebm_jax import settings as settings_lib

# energy(params, x, y) -> (B, S)
ParamEnergyFn = Callable[..., jax.Array]
KL_FORMS = ("paper", "right")  # loss.kl_form: the paper's sign of L_KL, or the critique's
sg = jax.lax.stop_gradient


def contrastive_divergence(e_pos: jax.Array, e_neg: jax.Array) -> jax.Array:
  return e_pos.mean() - e_neg.mean()


def energy_regulariser(e_pos: jax.Array, e_neg: jax.Array) -> jax.Array:
  return (e_pos ** 2).mean() + (e_neg ** 2).mean()


def nearest_neighbour_distance(x: jax.Array, refs: jax.Array, eps: float) -> jax.Array:
  """L2 distance from each row of x (n, ...) to its nearest row of refs (m, ...), shape (n,).

  The search uses ‖a‖² + ‖b‖² − 2ab (an n×m matrix, never an n×m×D tensor); the distance to
  the chosen neighbour is then recomputed directly, which is exact and gives the gradient
  (x_i − b_j*)/d_i without the cancellation error of the expanded form. eps sits inside the
  square root so the gradient stays finite when x_i coincides with a reference.
  """
  a = x.reshape(x.shape[0], -1)
  b = refs.reshape(refs.shape[0], -1)
  d2 = (jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :]
        - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  nearest = b[jnp.argmin(d2, axis=1)]
  return jnp.sqrt(jnp.sum((a - nearest) ** 2, axis=1) + eps)


def entropy_loss(x_hat: jax.Array, refs: jax.Array, eps: float) -> jax.Array:
  """−mean log NN(x̂, B): minimising it maximises the nearest-neighbour entropy estimate.
  Per-device buffers give refs (G, m, ...), one set per group: x̂'s rows are then G equal
  blocks, block g compared with set g only."""
  # sg(refs): the comparison set (augmented buffer draws) is a constant of L_ent; its gradient
  # reaches θ only through x̂.
  if refs.ndim == x_hat.ndim + 1:
    groups = refs.shape[0]
    blocks = x_hat.reshape((groups, x_hat.shape[0] // groups) + x_hat.shape[1:])
    d = jax.vmap(lambda x, r: nearest_neighbour_distance(x, sg(r), eps))(blocks, refs)
    return -jnp.log(d).mean()
  return -jnp.log(nearest_neighbour_distance(x_hat, sg(refs), eps)).mean()


class KLInputs(NamedTuple):
  """What L_opt / L_ent need from the sampler, for the n rows that carry them.

  Last-step mode uses x_noised = x̃_{K−1}. All-steps mode replays the chain from x0 with the
  same chain key (the chain is a pure function of key and start), differentiably in θ.
  """
  x_noised: jax.Array  # x̃_{K−1}[:n]
  x0: jax.Array  # chain starts [:n] (used by the all-steps option only)
  chain_key: jax.Array  # key the sampler ran with (all-steps option only)
  labels: jax.Array | None  # labels [:n] for conditional models


def kl_sample(energy: ParamEnergyFn, params, kl: KLInputs, chain: settings_lib.ChainSettings,
              all_steps: bool):
  """x̂, differentiable in θ through ∇ₓE_θ (last step) or through all K steps."""
  energy_x = lambda x: energy(params, x, kl.labels)
  x_range = langevin.box(chain.clip_x)
  if all_steps:
    # sg(x0): chain starts come from the buffer or noise and carry no θ-dependence.
    state, _ = langevin.run_chain(langevin.kernel(energy_x, chain), kl.chain_key, sg(kl.x0),
                                  chain.num_steps, chain.noise_scale, chain.anneal_noise,
                                  remat=True)
    return state.x
  # sg(x̃_{K−1}): all earlier steps are cut (ref §1.4); θ enters only via this step's ∇ₓE_θ.
  x_hat, _ = langevin.gradient_step(energy_x, sg(kl.x_noised), chain.step_size,
                                    chain.grad_clip, x_range)
  return x_hat


def icd_loss(params, energy: ParamEnergyFn, *, x_pos, y_pos, x_neg, y_neg, kl: KLInputs,
             ent_refs: jax.Array, ent_active: jax.Array, settings: settings_lib.LossSettings,
             chain: settings_lib.ChainSettings):
  """The total loss and every term, for `jax.value_and_grad(..., has_aux=True)`.

  ent_active (bool scalar) switches L_ent off until the buffer holds enough items for a
  meaningful comparison set. Returns (loss, aux) with aux holding each weighted term and the
  raw energies. `chain` is the training chain (x̂ is one of its steps, or all of them).
  """
  lc = settings
  e_pos = energy(params, x_pos, y_pos)
  # sg(x⁻): L_CD's negative term has no gradient path through the chain (paper Eq. 4).
  e_neg = energy(params, sg(x_neg), y_neg)
  zero = jnp.zeros((), jnp.float32)
  terms = {"cd": contrastive_divergence(e_pos, e_neg) if lc.cd else zero,
           "reg": lc.reg_weight * energy_regulariser(e_pos, e_neg) if lc.reg_weight else zero,
           "opt": zero, "ent": zero}
  if lc.opt or lc.ent:
    sign = -1.0 if lc.kl_form == "right" else 1.0
    x_hat = kl_sample(energy, params, kl, chain, lc.kl_all_steps)
    if lc.opt:
      # E_{sg θ}(x̂): L_opt has no direct parameter path, only the one through x̂ (paper Eq. 5-6).
      terms["opt"] = sign * lc.opt_weight * energy(sg(params), x_hat, kl.labels).mean()
    if lc.ent:
      ent = sign * lc.ent_weight * entropy_loss(x_hat, ent_refs, lc.ent_eps)
      terms["ent"] = jnp.where(ent_active, ent, zero)
  terms["kl"] = terms["opt"] + terms["ent"]
  loss = terms["cd"] + terms["reg"] + terms["kl"]
  return loss, {**terms, "e_pos": e_pos, "e_neg": e_neg}
