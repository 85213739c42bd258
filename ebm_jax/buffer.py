"""Replay buffers of past chain samples as fixed-size device arrays (pure, jittable).

* Reservoir (paper §2.5, ref §1.2): Algorithm R, so every item ever added has the same
  probability C/n of being in the buffer after n additions. A batch is added as if its items
  were added one after another: an item whose slot is taken again later in the same batch is
  dropped, which is exactly what the sequential algorithm would leave.
* FIFO (IGEBM, ref §7.4): a ring that keeps the newest C items.

Images are stored as 8-bit levels q = ⌊256·clip(x, 0, 1)⌋ ∈ {0..255} and read back as
(q + U(0,1))/256, the same dequantisation as the data (ref §1.1). This fixes the reference's
write ×255 / read ÷256 mismatch, which shrank chains by 255/256 per round trip (ref §7.1.3).
Float storage keeps values as they are (2-D data). Counters are int32: fine up to 2³¹ − 1 items.

Per-device buffers (buffer.per_device, as the authors ran CelebA-HQ and LSUN: 8 processes, each
with its own 10,000-item buffer and its own 100 entropy references): G independent buffers in
one Buffer whose arrays have a leading group axis, sharded over the devices. Group g serves
rows g·B/G … (g+1)·B/G − 1 of the batch (the rows its device holds) with the key
fold_in(key, g); the `*_groups` functions below are the single-buffer ones vmapped over g.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

STORAGES = ("uint8", "float32")
KINDS = ("reservoir", "fifo")
INITS = ("noise", "data")  # buffer.init: empty (chains start from noise) or filled with data


class Buffer(NamedTuple):
  data: jax.Array  # (capacity, *item_shape), uint8 levels or float32
  size: jax.Array  # int32 (): filled slots
  seen: jax.Array  # int32 (): items ever offered (Algorithm R's n; the FIFO write position)


def init(capacity: int, item_shape: tuple[int, ...], storage: str = "uint8") -> Buffer:
  if storage not in STORAGES:
    raise ValueError(f"buffer.storage={storage!r} is not one of {STORAGES}")
  if capacity < 1:
    raise ValueError(f"buffer.capacity={capacity} must be at least 1")
  dtype = jnp.uint8 if storage == "uint8" else jnp.float32
  return Buffer(jnp.zeros((capacity,) + tuple(item_shape), dtype),
                jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def encode(x: jax.Array, dtype) -> jax.Array:
  if dtype == jnp.uint8:
    return jnp.clip(jnp.floor(jnp.clip(x, 0.0, 1.0) * 256.0), 0, 255).astype(jnp.uint8)
  return x.astype(dtype)


def decode(key: jax.Array, stored: jax.Array) -> jax.Array:
  """Stored items back to float32; 8-bit levels are dequantised with U(0,1)/256 noise."""
  if stored.dtype == jnp.uint8:
    return (stored.astype(jnp.float32) + jax.random.uniform(key, stored.shape)) / 256.0
  return stored.astype(jnp.float32)


def _write(buf: Buffer, slots: jax.Array, items: jax.Array) -> Buffer:
  """Writes items[i] to slots[i] (slot == capacity means drop), last writer wins."""
  capacity = buf.data.shape[0]
  b = slots.shape[0]
  later = jnp.arange(b)[None, :] > jnp.arange(b)[:, None]
  overwritten = jnp.any((slots[:, None] == slots[None, :]) & later, axis=1)
  slots = jnp.where(overwritten, capacity, slots)  # now unique, so the scatter is well defined
  data = buf.data.at[slots].set(encode(items, buf.data.dtype), mode="drop",
                                unique_indices=True)
  seen = buf.seen + b
  return Buffer(data, jnp.minimum(seen, capacity).astype(jnp.int32), seen)


def add_reservoir(buf: Buffer, key: jax.Array, items: jax.Array) -> Buffer:
  """Algorithm R over a batch: item t (0-based over all time) goes to slot t while the buffer
  fills, then to slot r ~ U{0..t} if r < capacity, else it is discarded."""
  capacity = buf.data.shape[0]
  t = buf.seen + jnp.arange(items.shape[0], dtype=jnp.int32)
  r = jax.random.randint(key, t.shape, 0, t + 1, dtype=jnp.int32)
  slots = jnp.where(t < capacity, t, jnp.where(r < capacity, r, capacity))
  return _write(buf, slots, items)


def add_fifo(buf: Buffer, items: jax.Array) -> Buffer:
  capacity = buf.data.shape[0]
  slots = (buf.seen + jnp.arange(items.shape[0], dtype=jnp.int32)) % capacity
  return _write(buf, slots, items)


def add(buf: Buffer, key: jax.Array, items: jax.Array, kind: str = "reservoir") -> Buffer:
  if kind == "reservoir":
    return add_reservoir(buf, key, items)
  if kind == "fifo":
    return add_fifo(buf, items)
  raise ValueError(f"buffer.kind={kind!r} is not one of {KINDS}")


def sample_stored(buf: Buffer, key: jax.Array, n: int) -> jax.Array:
  """n stored items drawn uniformly with replacement from the filled slots (any if empty)."""
  idx = jax.random.randint(key, (n,), 0, jnp.maximum(buf.size, 1))
  return buf.data[idx]


def sample(buf: Buffer, key: jax.Array, n: int) -> jax.Array:
  """n items, uniformly with replacement, as float32 (dequantised for 8-bit storage)."""
  k_idx, k_deq = jax.random.split(key)
  return decode(k_deq, sample_stored(buf, k_idx, n))


def init_groups(groups: int, capacity: int, item_shape: tuple[int, ...],
                storage: str = "uint8") -> Buffer:
  """`groups` empty buffers of `capacity` items each, stacked on a leading axis."""
  one = init(capacity, item_shape, storage)
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (groups,) + a.shape), one)


def _group_keys(key: jax.Array, groups: int) -> jax.Array:
  return jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(groups))


def sample_groups(buf: Buffer, key: jax.Array, n: int) -> jax.Array:
  """n // G items from each group's buffer, group after group: (n, ...)."""
  groups = buf.size.shape[0]
  x = jax.vmap(lambda b, k: sample(b, k, n // groups))(buf, _group_keys(key, groups))
  return x.reshape((n,) + x.shape[2:])


def add_groups(buf: Buffer, key: jax.Array, items: jax.Array, kind: str = "reservoir") -> Buffer:
  """Rows g·n/G … of items (n, ...) go to group g's buffer."""
  groups = buf.size.shape[0]
  items = items.reshape((groups, items.shape[0] // groups) + items.shape[1:])
  return jax.vmap(lambda b, k, x: add(b, k, x, kind))(buf, _group_keys(key, groups), items)


def refs_groups(buf: Buffer, key: jax.Array, n: int) -> jax.Array:
  """n items from each group's buffer: (G, n, ...), one comparison set per group."""
  groups = buf.size.shape[0]
  return jax.vmap(lambda b, k: sample(b, k, n))(buf, _group_keys(key, groups))
