"""Run by test_train.py in a process with 2 forced CPU devices: per-device replay buffers
(buffer.per_device). Two steps of the negative phase on a 2-device mesh; then each device's
buffer must equal a single buffer on one device that was given only that device's batch rows
and its group key fold_in(key, g) — the 2-device program keeps G independent buffers, each
on its own device, with no row crossing between them. The entropy references must come from
the device's own buffer."""

import jax
import numpy as np

from ebm_jax import buffer as buffer_lib
from ebm_jax import step as step_lib
from ebm_jax import train
from ebm_jax.configs import digits


def main():
  assert jax.device_count() == 2, jax.devices()
  cfg = digits.get_config("tiny")
  cfg.buffer.per_device = True
  cfg.buffer.noise_restart_prob = 0.0
  cfg.buffer.augment = False  # references straight from the buffer: each can be looked up
  setup = train.Setup(cfg)
  groups, b = 2, cfg.train.batch_size
  phase = jax.jit(step_lib.make_negative_phase(cfg, setup.model, setup.info, setup.mesh))
  state = setup.init_state()
  assert state.buffer.data.shape[0] == groups
  stream = setup.stream(0)
  singles = [jax.device_get(jax.tree.map(lambda a, g=g: a[g], state.buffer)) for g in range(2)]
  add_one = jax.jit(buffer_lib.add, static_argnums=3)
  for _ in range(2):
    key = jax.random.fold_in(jax.random.fold_in(step_lib.seed_keys(cfg.seed)[1],
                                                state.recoveries), state.step)
    k_add = jax.random.split(key, 9)[6]  # the phase's k_add (step.py splits the key in 9)
    neg = phase(state, setup.global_batch(next(stream)))
    # each device holds exactly its own group's buffer
    for shard in neg.buffer.data.addressable_shards:
      g = shard.index[0].start
      assert shard.data.shape[0] == 1 and shard.device == setup.mesh.devices[g]
    x_neg = np.asarray(neg.x_neg)
    for g in range(groups):
      rows = x_neg[g * b // groups:(g + 1) * b // groups]
      inputs = jax.device_put((singles[g], jax.random.fold_in(k_add, g), rows), jax.devices()[0])
      singles[g] = jax.device_get(add_one(*inputs, cfg.buffer.kind))
      got = jax.device_get(jax.tree.map(lambda a, g=g: a[g], neg.buffer))
      for a, c in zip(jax.tree.leaves(got), jax.tree.leaves(singles[g])):
        np.testing.assert_array_equal(a, c)
    state = state.replace(buffer=neg.buffer, step=state.step + 1)
  refs = np.asarray(neg.ent_refs)
  assert refs.shape[:2] == (groups, cfg.loss.ent_num_refs)
  for g in range(groups):  # group g's references are items of group g's buffer
    stored = {bytes(item) for item in np.asarray(singles[g].data)[:int(singles[g].size)]}
    levels = np.floor(refs[g] * 256).astype(np.uint8)
    assert all(bytes(r) in stored for r in levels), g
  print(f"devices=2 groups={groups} per-device buffers equal single-device buffers")


if __name__ == "__main__":
  main()
