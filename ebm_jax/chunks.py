"""loss.chunks: the step's loss and θ-gradient taken over equal strided chunks of the rows,
one chunk after another, so that only one chunk's activations are alive at a time."""

import jax
import jax.numpy as jnp


def chunk_rows(x: jax.Array, chunks: int) -> jax.Array:
  """(N, ...) -> (chunks, N / chunks, ...), chunk c holding rows c, c + chunks, c + 2 chunks, …:
  strided, so that when the N rows lie on the devices in equal contiguous blocks (the batch
  sharding) every chunk takes the same number of rows from each device, in device order (per-
  device buffers' L_ent groups stay whole), and no row moves between devices."""
  return jnp.swapaxes(x.reshape((x.shape[0] // chunks, chunks) + x.shape[1:]), 0, 1)


def unchunk_rows(x: jax.Array) -> jax.Array:
  """The inverse of chunk_rows: (chunks, n, ...) -> (chunks · n, ...) in the original order."""
  return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def value_and_grad(loss_for, neg, params, chunks: int):
  """((loss, aux), θ-gradient) of loss_for(neg) (step.make_loss_fn), the rows of the
  negative phase `neg` taken in `chunks` equal chunks one after another (a scan), each chunk's loss and gradient averaged.

  Every term of the loss is a mean over rows with equal weights (L_CD, L_reg over the batch,
  L_opt, L_ent over the KL rows with a fixed comparison set, JEM's cross-entropy), so the
  average of equal chunks' losses is the loss and the average of their gradients its gradient:
  the same numbers up to float summation order, the same FLOPs, and only one chunk's
  activations alive at a time. aux's per-row energies are put back in row order."""
  grad_fn = lambda n: jax.value_and_grad(loss_for(n), has_aux=True)(params)
  if chunks == 1:
    return grad_fn(neg)
  split = lambda x: None if x is None else chunk_rows(x, chunks)
  rows = (neg.x_pos, neg.labels, neg.x_neg, neg.kl.x_noised, neg.kl.x0, neg.kl.labels,
          neg.class_labels)

  def body(total, chunk):
    x_pos, labels, x_neg, x_noised, x0, kl_labels, class_labels = chunk
    kl = neg.kl._replace(x_noised=x_noised, x0=x0, labels=kl_labels)
    part = neg._replace(x_pos=x_pos, labels=labels, x_neg=x_neg, kl=kl,
                        class_labels=class_labels)
    (loss, aux), grads = grad_fn(part)
    return jax.tree.map(jnp.add, total, grads), (loss, aux)

  zeros = jax.tree.map(jnp.zeros_like, params)
  total, (losses_, aux) = jax.lax.scan(body, zeros, jax.tree.map(split, rows,
                                                                 is_leaf=lambda x: x is None))
  per_row = {"e_pos", "e_neg"}
  aux = {k: unchunk_rows(v) if k in per_row else v.mean(0) for k, v in aux.items()}
  return (losses_.mean(), aux), jax.tree.map(lambda g: g / chunks, total)
