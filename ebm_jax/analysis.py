"""What each loss term does to the parameter gradient (the paper's Fig. 12).

For a state and a batch, `make_gradient_decomposition` recomputes exactly what the training
step would (same chain program, same random numbers: `step.phase_fns`) and differentiates
each term of the loss on its own: L_CD, L_reg, L_opt, L_ent, L_KL = L_opt + L_ent and the total.
It reports their global gradient norms, the cosine between ∇L_KL and ∇L_CD, and both again per
layer group (a head's stem conv, each residual block, the attention block, the output layer).

It is its own jitted function, run every `train.log_grad_terms_every` steps by the training loop
(off the hot path) and callable from a notebook on a restored checkpoint.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ebm_jax import chain_program, sharding
from ebm_jax import settings as settings_lib
from ebm_jax import step as step_lib

TERMS = ("cd", "reg", "opt", "ent")  # the four terms of the loss, as losses.icd_loss names them
PREFIX = "grad_terms/"


def layer_groups(params) -> dict[str, Any]:
  """{"head0/ResBlock_1": subtree, ...}: the parameters split by layer (two path levels for
  multiscale nets, whose top level is the head; one level otherwise)."""
  groups = {}
  for name, sub in params.items():
    if name.startswith("head") and isinstance(sub, dict):
      groups.update({f"{name}/{layer}": leaves for layer, leaves in sub.items()})
    else:
      groups[name] = sub
  return groups


def _norm(tree) -> jax.Array:
  return optax.tree_utils.tree_norm(tree)


def _cosine(a, b) -> jax.Array:
  dot = optax.tree_utils.tree_vdot(a, b)
  return dot / jnp.maximum(_norm(a) * _norm(b), 1e-30)


def term_gradients(config: settings_lib.Settings, model, info, state, batch, phase=None):
  """{term: parameter gradient} for cd, reg, opt, ent, kl (= opt + ent), ce (JEM only) and
  total, the chain inside this traceable function. Not jitted (see
  make_gradient_decomposition)."""
  phase = phase or step_lib.make_negative_phase(config, model, info)
  return gradients_of(config, model, state.params, phase(state, batch))


def gradients_of(config: settings_lib.Settings, model, params,
                 neg: step_lib.NegativePhase):
  """term_gradients after the negative phase `neg`."""
  loss_fn = step_lib.make_loss_fn(config, model, neg)

  def terms(params):
    _, aux = loss_fn(params)
    out = {k: aux[k] for k in TERMS}
    if "ce" in aux:  # JEM's classifier term
      out["ce"] = config.loss.ce_weight * aux["ce"]
    return out

  # One reverse pass per term: the point is to see them apart.
  grads = jax.jacrev(terms)(params)
  parts = list(grads)
  grads["kl"] = jax.tree.map(jnp.add, grads["opt"], grads["ent"])
  grads["total"] = jax.tree.map(lambda *g: sum(g), *(grads[k] for k in parts))
  return grads


def summarize(grads) -> dict[str, jax.Array]:
  """Flat scalars: norm of each term's gradient and cos(∇L_KL, ∇L_CD), global and per group."""
  out = {f"{PREFIX}norm_{k}": _norm(g) for k, g in grads.items()}
  out[f"{PREFIX}cos_kl_cd"] = _cosine(grads["kl"], grads["cd"])
  per_term = {k: layer_groups(g) for k, g in grads.items()}
  for group in per_term["total"]:
    for k in ("cd", "kl", "total"):
      out[f"{PREFIX}{group}/norm_{k}"] = _norm(per_term[k][group])
    out[f"{PREFIX}{group}/cos_kl_cd"] = _cosine(per_term["kl"][group], per_term["cd"][group])
  return out


def make_gradient_decomposition(config: settings_lib.Settings, model, info, mesh,
                                state_sharding, batch_sharding):
  """decompose(state, batch) -> {name: scalar} (see `summarize`): the training step's chain
  program (`step.make_train_step`'s form: host-driven on CPU for long chains) followed by the
  gradient terms instead of the update. It does not donate the state."""
  fns = step_lib.phase_fns(config, model, info, mesh,
                           lambda state, neg: summarize(gradients_of(config, model,
                                                                     state.params, neg)))
  return chain_program.build(fns, step_lib.training_chain(config), step_lib.chain_policy(config),
                             mesh, in_shardings=(state_sharding, batch_sharding),
                             out_shardings=sharding.replicated(mesh))
