"""Reservoir and FIFO replay buffers: inclusion statistics, order, storage round trips."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ebm_jax import buffer


def _stream_ids(kind, capacity, num_items, batch, key):
  """Adds items 0..num_items−1 (their id as the value) in batches; returns the buffer."""
  buf = buffer.init(capacity, (1,), "float32")
  ids = jnp.arange(num_items, dtype=jnp.float32).reshape(-1, batch, 1)

  def body(b, xs):
    i, items = xs
    return buffer.add(b, jax.random.fold_in(key, i), items, kind), None

  buf, _ = jax.lax.scan(body, buf, (jnp.arange(ids.shape[0]), ids))
  return buf


def test_reservoir_inclusion_is_uniform():
  # Capacity 10, 105 items in batches of 7 (so batches straddle the fill boundary and slots
  # collide within a batch), over 3000 seeds: every item should be kept with p = 10/105.
  capacity, num_items, batch, seeds = 10, 105, 7, 3000
  run = jax.jit(jax.vmap(lambda k: _stream_ids("reservoir", capacity, num_items, batch, k)))
  bufs = run(jax.random.split(jax.random.key(0), seeds))
  assert np.all(np.asarray(bufs.size) == capacity)
  assert np.all(np.asarray(bufs.seen) == num_items)
  kept = np.asarray(bufs.data[..., 0]).astype(int)  # (seeds, capacity) ids
  for row in kept[:50]:
    assert len(set(row)) == capacity  # no item stored twice
  counts = np.bincount(kept.ravel(), minlength=num_items)
  expected = seeds * capacity / num_items
  chi2 = ((counts - expected) ** 2 / expected).sum()
  p = stats.chi2.sf(chi2, df=num_items - 1)
  assert p > 1e-3, (p, counts.min(), counts.max())
  # the newest items are not favoured (what a FIFO or a "replace a random slot" rule does)
  assert abs(counts[-batch:].mean() - counts[:capacity].mean()) < 0.1 * expected


def test_random_slot_replacement_would_fail_the_same_test():
  # Guard the test itself: "overwrite a uniformly random slot" keeps recent items far more.
  rng = np.random.default_rng(0)
  counts = np.zeros(105)
  for _ in range(3000):
    slots = list(range(10))
    for t in range(10, 105):
      slots[rng.integers(10)] = t
    counts[slots] += 1
  expected = 3000 * 10 / 105
  p = stats.chi2.sf(((counts - expected) ** 2 / expected).sum(), df=104)
  assert p < 1e-3


def test_fifo_keeps_the_newest():
  buf = _stream_ids("fifo", 10, 56, 8, jax.random.key(0))
  assert sorted(np.asarray(buf.data[:, 0]).astype(int).tolist()) == list(range(46, 56))
  # a batch larger than the buffer: only its last items survive
  buf = buffer.add(buffer.init(3, (1,), "float32"), jax.random.key(0),
                   jnp.arange(5.0).reshape(5, 1), "fifo")
  assert sorted(np.asarray(buf.data[:, 0]).tolist()) == [2.0, 3.0, 4.0]


def test_sampling_is_uniform_with_replacement_over_filled_slots():
  buf = buffer.add(buffer.init(10, (1,), "float32"), jax.random.key(0),
                   jnp.arange(4.0).reshape(4, 1) + 1.0)
  draws = np.asarray(buffer.sample(buf, jax.random.key(1), 4000))[:, 0]
  assert set(np.unique(draws)) == {1.0, 2.0, 3.0, 4.0}  # never an empty slot
  freq = np.bincount(draws.astype(int), minlength=5)[1:] / 4000
  np.testing.assert_allclose(freq, 0.25, atol=0.03)


def test_uint8_storage_round_trip_is_unbiased_and_does_not_drift():
  x = jax.random.uniform(jax.random.key(0), (64, 4, 4, 3))
  buf = buffer.add(buffer.init(64, (4, 4, 3)), jax.random.key(1), x)
  assert buf.data.dtype == jnp.uint8
  y = buffer.decode(jax.random.key(2), buf.data)
  assert np.abs(np.asarray(y) - np.asarray(x)).max() < 1 / 256 + 1e-6
  # a hundred write/read round trips keep the mean (the reference shrank by 255/256 each time)
  z = x
  for i in range(100):
    z = buffer.decode(jax.random.key(i), buffer.encode(z, jnp.uint8))
  assert abs(float(z.mean()) - float(x.mean())) < 2e-3
  assert float(buffer.encode(jnp.array([1.0, 0.0, 1.5, -1.0]), jnp.uint8).max()) == 255


def test_add_and_sample_compile_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(buf, key, items):
    buf = buffer.add(buf, key, items)
    return buf, buffer.sample(buf, key, 3)

  buf = buffer.init(8, (2, 2, 1))
  for i in range(3):
    buf, _ = step(buf, jax.random.key(i), jnp.full((4, 2, 2, 1), 0.1 * i))
  assert int(buf.size) == 8 and int(buf.seen) == 12
