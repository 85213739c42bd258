"""One whole training step recomputed by hand, outside the training code, and compared field by
field with the jitted step (issues 17 and 27).

The oracle below reuses only what is tested on its own elsewhere — the net's `apply`, the
augmentation transition and the PRNG — and writes the wiring out again from the paper's
algorithm (arXiv:2012.01316, Sec. 3; docs/algorithm.md): the step's keys, dequantisation,
chain starts (buffer draw, transition, data replacement, noise restarts), K Langevin steps
written as a loop with their noise scales σ_k written out from the schedule's definition, the
buffer add as Algorithm R or a ring written sequentially in numpy, the entropy comparison set
drawn *after* the add, each loss term from its formula, global-norm clip, Adam from its update
equations, `lr_scale` and the EMA. The state it starts from is made by hand (a partly filled
buffer, non-zero Adam moments, one rollback counted, lr_scale 0.5) and the config's values are
chosen so that each of them acts (both in tests/_oracle_cases.py): noise restarts and data
replacement with probabilities well inside (0, 1), β₁ ≠ 0, a global-norm clip that is active,
a KL batch n < B.

The cases cover the wirings that one unconditional run cannot show: the step with its chain
inside the one program and driven from the host (ebm_jax/chain_program.py); a conditional model,
whose labels must reach the chain, L_CD and the KL rows; annealed noise over K = 5 steps run as
host segments of 2, 2 and 1 steps, so that each segment must receive its own slice of the σ
schedule; IGEBM (spectral norm, ∇ₓE clip) and JEM (cross-entropy) through the host chain.

Each of these wirings, broken by hand once, makes this test fail: the buffer receiving the chain
starts instead of x_K; the entropy references drawn before the add; the KL sample rebuilt from
x₀ instead of x̃_{K−1}; chain starts not augmented; the noise-restart or data probability
changed; EMA arguments swapped; a wrong Adam β or clip; `lr_scale` not applied; the host chain
giving its segments the σ of the next step (the annealed case); the chain sampling under
other labels than the batch's (the conditional case).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax import augment as augment_lib
from ebm_jax import chain_program, train

from _oracle_cases import B, config as _config, hand_keys, known_state as _known_state


def _oracle(config, model, info, s, batch):
  """The new state's fields and the step's metrics, recomputed from the algorithm."""
  lc, bc, loss_cfg, oc = config.langevin, config.buffer, config.loss, config.optim
  params, model_state = s.params, s.model_state
  jem = bool(config.model.jem)
  y = batch["label"] if (info.num_classes > 0 and not jem) else None
  (k_deq, k_draw, k_aug, k_restart, k_noise, k_chain, k_add, k_refs,
   k_refs_aug) = hand_keys(config.seed, s)

  images = np.asarray(batch["image"], np.float32)
  x_pos = (images + np.asarray(jax.random.uniform(k_deq, images.shape))) / info.levels
  if config.model.conv == "spectral":  # one power iteration on the data batch
    _, model_state = model.apply({"params": params, **model_state}, x_pos, y, train=True,
                                 mutable=list(model_state))

  @jax.jit
  def energy(p, x, labels):
    return model.apply({"params": p, **model_state}, x, labels)

  def draw(data, size, k, n):  # uniform with replacement over the filled slots, dequantised
    k_idx, k_u = jax.random.split(k)
    idx = np.asarray(jax.random.randint(k_idx, (n,), 0, max(int(size), 1)))
    items = np.asarray(data)[idx].astype(np.float32)
    return (items + np.asarray(jax.random.uniform(k_u, items.shape))) / 256.0

  transition = augment_lib.make_transition(config.augment) if bc.augment else None
  augment = jax.jit(lambda k, x: augment_lib.augment_batch(transition, k, x))
  x0 = draw(s.buffer.data, s.buffer.size, k_draw, B)
  if transition is not None:
    x0 = np.asarray(augment(k_aug, x0))
  if bc.data_prob > 0:
    from_data = np.asarray(jax.random.uniform(jax.random.fold_in(k_restart, 1), (B,)))
    x0 = np.where((from_data < bc.data_prob)[:, None, None, None], x_pos, x0)
  restart = np.asarray(jax.random.uniform(k_restart, (B,))) < bc.noise_restart_prob
  restart |= int(s.buffer.size) == 0
  noise = np.asarray(jax.random.uniform(k_noise, x0.shape, minval=bc.noise_range[0],
                                        maxval=bc.noise_range[1]))
  x0 = np.where(restart[:, None, None, None], noise, x0)

  # σ_k for the steps k = 1..K: σ, or σ (K − k)/K when annealed (the reference's `anneal`);
  # the last annealed step adds no noise
  num_steps = lc.num_steps
  sigmas = [lc.noise_scale * ((num_steps - k) / num_steps if lc.anneal_noise else 1.0)
            for k in range(1, num_steps + 1)]
  grad_x = jax.jit(jax.grad(lambda p, x, labels: energy(p, x, labels).sum(), argnums=1))
  x, energies, grad_norms = jnp.asarray(x0), [], []
  for k in range(num_steps):
    k_step = jax.random.fold_in(k_chain, k)
    eps = jax.vmap(lambda i, k=k_step: jax.random.normal(jax.random.fold_in(k, i),
                                                         x.shape[1:]))(jnp.arange(B))
    x_tilde = x + sigmas[k] * eps
    g = grad_x(params, x_tilde, y)
    energies.append(energy(params, x_tilde, y).sum(-1))
    grad_norms.append(jnp.sqrt(jnp.sum(g.reshape(B, -1) ** 2, -1)))
    if lc.grad_clip > 0:
      g = jnp.clip(g, -lc.grad_clip, lc.grad_clip)
    x = jnp.clip(x_tilde - lc.step_size * g, 0.0, 1.0)
  x_k = np.asarray(x)

  # the buffer add, one item after another
  data = np.array(s.buffer.data)
  capacity, seen = data.shape[0], int(s.buffer.seen)
  levels8 = np.clip(np.floor(np.clip(x_k, 0, 1) * 256.0), 0, 255).astype(np.uint8)
  if bc.kind == "reservoir":
    t = seen + np.arange(B)
    r = np.asarray(jax.random.randint(k_add, (B,), 0, jnp.asarray(t + 1, jnp.int32),
                                      dtype=jnp.int32))
    for i in range(B):
      slot = t[i] if t[i] < capacity else r[i]
      if slot < capacity:
        data[slot] = levels8[i]
  else:
    for i in range(B):
      data[(seen + i) % capacity] = levels8[i]
  size = min(seen + B, capacity)

  refs = draw(data, size, k_refs, loss_cfg.ent_num_refs)  # after the add
  if transition is not None:
    refs = np.asarray(augment(k_refs_aug, refs))
  ent_on = size > loss_cfg.ent_min_buffer
  n = loss_cfg.kl_samples or B
  x_kl = jnp.asarray(np.asarray(x_tilde)[:n])  # x̃_{K−1}
  y_kl = None if y is None else y[:n]
  sign = -1.0 if loss_cfg.kl_form == "right" else 1.0

  def loss_fn(p):
    e_pos, e_neg = energy(p, x_pos, y), energy(p, jnp.asarray(x_k), y)
    terms = {"cd": e_pos.mean() - e_neg.mean(),
             "reg": loss_cfg.reg_weight * ((e_pos ** 2).mean() + (e_neg ** 2).mean()),
             "opt": 0.0, "ent": 0.0}
    x_hat = jnp.clip(x_kl - lc.step_size * jnp.clip(
        grad_x(p, x_kl, y_kl), *((-lc.grad_clip, lc.grad_clip) if lc.grad_clip else
                                  (-jnp.inf, jnp.inf))), 0.0, 1.0)
    if loss_cfg.opt:
      terms["opt"] = sign * loss_cfg.opt_weight * energy(
          jax.lax.stop_gradient(p), x_hat, y_kl).mean()
    if loss_cfg.ent and ent_on:
      d2 = jnp.sum((x_hat.reshape(n, 1, -1) - refs.reshape(1, len(refs), -1)) ** 2, -1)
      terms["ent"] = -sign * loss_cfg.ent_weight * jnp.log(
          jnp.sqrt(d2 + loss_cfg.ent_eps).min(1)).mean()
    total = terms["cd"] + terms["reg"] + terms["opt"] + terms["ent"]
    if jem:
      logits = model.apply({"params": p, **model_state}, x_pos,
                           method=type(model).logits)
      terms["ce"] = -jnp.sum(batch["label"] * jax.nn.log_softmax(logits), -1).mean()
      terms["acc"] = (logits.argmax(-1) == batch["label"].argmax(-1)).mean()
      total = total + loss_cfg.ce_weight * terms["ce"]
    return total, (terms, e_pos, e_neg)

  (loss, (terms, e_pos, e_neg)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params)
  leaves = lambda t: [np.asarray(v, np.float64) for v in jax.tree.leaves(t)]
  norm = lambda t: float(np.sqrt(sum(np.sum(v ** 2) for v in leaves(t))))
  grad_norm = norm(grads)
  assert grad_norm > oc.grad_clip_norm  # the clip acts in this test
  clipped = jax.tree.map(lambda g: np.asarray(g) * (oc.grad_clip_norm / grad_norm), grads)
  adam = s.opt_state[1][0]
  count = int(adam.count) + 1
  mu = jax.tree.map(lambda m, g: oc.b1 * m + (1 - oc.b1) * g, adam.mu, clipped)
  nu = jax.tree.map(lambda v, g: oc.b2 * v + (1 - oc.b2) * g * g, adam.nu, clipped)
  updates = jax.tree.map(
      lambda m, v: -oc.learning_rate * float(s.lr_scale) * (m / (1 - oc.b1 ** count))
      / (np.sqrt(v / (1 - oc.b2 ** count)) + oc.eps), mu, nu)
  new_params = jax.tree.map(lambda p, u: p + u, params, updates)
  d = oc.ema_decay
  ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, s.ema_params, new_params)

  metrics = {"loss": loss, "loss_cd": terms["cd"], "loss_reg": terms["reg"],
             "loss_opt": terms["opt"], "loss_ent": terms["ent"],
             "loss_kl": terms["opt"] + terms["ent"],
             "energy_pos": e_pos.mean(), "energy_neg": e_neg.mean(),
             "energy_gap": e_pos.mean() - e_neg.mean(),
             "langevin_grad_norm": grad_norms[-1].mean(),
             "langevin_energy_start": energies[0].mean(),
             "langevin_energy_end": energies[-1].mean(),
             "restart_fraction": restart.mean(), "buffer_fill": size / capacity,
             "entropy_active": float(ent_on), "grad_norm": grad_norm,
             "update_norm": norm(updates), "param_norm": norm(new_params)}
  if jem:
    metrics["loss_ce"], metrics["train_accuracy"] = terms["ce"], terms["acc"]
  fields = {"params": new_params, "ema_params": ema, "mu": mu, "nu": nu, "count": count,
            "buffer_data": data, "buffer_size": size, "buffer_seen": seen + B,
            "model_state": model_state, "x_k": x_k}
  if y is not None:  # how much the labels move the energy: other labels, other numbers
    other = np.roll(y, 1, axis=0)
    fields["label_effect"] = float(np.abs(np.asarray(energy(params, x_pos, y))
                                          - np.asarray(energy(params, x_pos, other))).max())
  return fields, jax.tree.map(float, metrics)


def _close(a, b, what, rtol=2e-4, atol=1e-6):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), what
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=what)


# segment: langevin.host_segment, 0 for the chain inside the one step program (GPU/TPU's
# default), 2 for the chain driven from the host as 2-step programs and a shorter last one
# (ebm_jax/chain_program.py, CPU's default for long chains); `programs`: those programs' lengths.
# The default run has ICD both ways; a conditional model with annealed noise through the host
# chain, the conditional model in the one program, IGEBM and JEM (their own nets) run with
# `pytest -m slow`.
@pytest.mark.parametrize("kind,segment,programs", [
    ("icd", 0, []), ("icd", 2, [2, 1]),
    pytest.param("cond_anneal", 2, [2, 2, 1], marks=pytest.mark.slow),  # ~1.3 min
    pytest.param("cond", 0, [], marks=pytest.mark.slow),
    pytest.param("igebm", 2, [2, 1], marks=pytest.mark.slow),
    pytest.param("jem", 2, [2, 1], marks=pytest.mark.slow)])
def test_one_step_equals_the_oracle(kind, segment, programs, fashion_mnist_dir):
  config = _config(kind, fashion_mnist_dir)
  config.langevin.host_segment = segment
  setup = train.Setup(config)
  host_driven = isinstance(setup.step_fn, chain_program.HostChain)
  assert host_driven == bool(programs)
  if host_driven:
    assert setup.step_fn.lengths == programs
  state = _known_state(setup, np.random.default_rng(0))
  batch = setup.global_batch(next(setup.stream(int(state.step))))
  host_batch = jax.device_get(batch)

  want, want_metrics = _oracle(config, setup.model, setup.info, state, host_batch)
  new, metrics, negatives = jax.device_get(
      setup.step_fn(jax.device_put(state, setup.state_sharding), batch))

  assert int(new.step) == int(state.step) + 1
  assert int(new.recoveries) == 1 and float(new.lr_scale) == 0.5
  _close(negatives, want["x_k"][:len(negatives)], "x_K", atol=2e-5)
  # 8-bit levels: floor(256 x) may land one level apart where x sits on a level boundary
  diff = np.abs(new.buffer.data.astype(int) - want["buffer_data"].astype(int))
  assert diff.max() <= 1 and (diff == 0).mean() > 0.999, "buffer contents"
  assert (int(new.buffer.size), int(new.buffer.seen)) == (want["buffer_size"],
                                                          want["buffer_seen"])
  _close(new.model_state, want["model_state"], "model_state (spectral-norm vectors)")
  _close(new.params, want["params"], "params")
  _close(new.ema_params, want["ema_params"], "ema_params")
  adam = new.opt_state[1][0]
  assert int(adam.count) == want["count"]
  _close(adam.mu, want["mu"], "Adam mu", rtol=1e-3, atol=1e-7)
  _close(adam.nu, want["nu"], "Adam nu", rtol=1e-3, atol=1e-9)
  for name, value in want_metrics.items():
    np.testing.assert_allclose(float(metrics[name]), value, rtol=1e-3, atol=1e-5,
                               err_msg=name)
  assert float(metrics["langevin_accept_rate"]) == 1.0
  # what makes each wiring visible above actually happened in this step
  assert 0.0 < want_metrics["restart_fraction"] < 1.0
  conditional = kind.startswith("cond")
  assert ("label_effect" in want) == conditional  # conditional: labels reach the net
  if conditional:  # and change its energies far beyond the tolerances above
    assert want["label_effect"] > 1e-3
  if config.loss.ent:
    assert want_metrics["entropy_active"] == 1.0 and want_metrics["loss_ent"] != 0.0
  else:
    assert want_metrics["loss_kl"] == 0.0
