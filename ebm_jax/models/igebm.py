"""IGEBM's own networks (Du & Mordatch 2019; openai/ebm_code_release, models.py and utils.py),
for `model.name='igebm'`: no normalisation layers, leaky-ReLU (slope 0.2, TF's default)
activations and spectral norm (one power iteration, the `spectral` collection) on every
convolution and hidden dense layer; the final dense layer that gives the energy is not
normalised (`init_fc_weight(..., 'fc5', ..., spec_norm=False)`).

  IGEBMResNet   models.py `ResNet32` (colour images): a 3×3 stem conv without bias
                (`c1_pre`), six `smart_res_block`s (F, F↓, 2F↓ with a conv shortcut, 2F, 2F↓,
                2F; ↓ = 2×2 average pool after the sum), ReLU, a global sum pool, dense → 1.
  IGEBMMnist    models.py `MnistNet` (grey images): a 3×3 stem conv (64 filters), three
                stride-2 4×4 convs (F, 2F, 4F), flatten, a spectral-normed dense layer (2F),
                leaky ReLU, dense → 1.

`smart_res_block` (utils.py): a learned bias is added to the input of each of its two 3×3
convs; the second conv's output is multiplied by a learned gain (ones at init) and its kernel
starts near zero, normalised with a lower bound (w / σ · min(σ, 1): spectral norm only shrinks
it), so each block starts close to its shortcut. Convolutions have no bias of their own.
Unconditional only (IGEBM's class-conditional gains are not built).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_jax.models.layers import SPECTRAL, torch_kernel_init


def leaky_relu(x):
  return jax.nn.leaky_relu(x, 0.2)  # tf.nn.leaky_relu's default slope


class SNConv(nn.Module):
  """A bias-free 'same' convolution with IGEBM's spectral norm (utils.py
  `spectral_normed_weight`): kernel reshaped to (−1, out), one power iteration on a persistent
  u updated only when train=True, w / σ (or w / σ · min(σ, 1) with `lower_bound`)."""
  features: int
  kernel: int = 3
  stride: int = 1
  lower_bound: bool = False
  near_zero_init: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    shape = (self.kernel, self.kernel, x.shape[-1], self.features)
    init = nn.initializers.normal(1e-10) if self.near_zero_init else torch_kernel_init
    w = spectral_normed(self, self.param("kernel", init, shape, jnp.float32), train,
                        self.lower_bound)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (self.stride,) * 2, "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def spectral_normed(module: nn.Module, w: jax.Array, train: bool, lower_bound: bool = False,
                    name: str = "u") -> jax.Array:
  w2 = w.reshape(-1, w.shape[-1])
  u = module.variable(SPECTRAL, name, lambda: jax.random.truncated_normal(
      module.make_rng("params"), -2.0, 2.0, (1, w.shape[-1]), jnp.float32))
  v_hat = _l2_normalize(u.value @ w2.T)
  u_hat = _l2_normalize(v_hat @ w2)
  u_hat, v_hat = jax.lax.stop_gradient(u_hat), jax.lax.stop_gradient(v_hat)
  sigma = (v_hat @ w2 @ u_hat.T)[0, 0]
  if train and not module.is_initializing():
    u.value = u_hat
  if lower_bound:
    sigma = sigma + 1e-6
    return w / sigma * jnp.minimum(sigma, 1.0)
  return w / sigma


def _l2_normalize(v):
  return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v), 1e-12))  # tf.nn.l2_normalize


class SNDense(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    w = self.param("kernel", torch_kernel_init, (x.shape[-1], self.features), jnp.float32)
    b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    w = spectral_normed(self, w, train)
    return x.astype(self.dtype) @ w.astype(self.dtype) + b.astype(self.dtype)


class SmartResBlock(nn.Module):
  features: int
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bias1 = self.param("bias1", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    h = leaky_relu(SNConv(self.features, dtype=self.dtype)(x + bias1.astype(x.dtype), train))
    bias2 = self.param("bias2", nn.initializers.zeros, (self.features,), jnp.float32)
    gain = self.param("gain", nn.initializers.ones, (self.features,), jnp.float32)
    h = SNConv(self.features, lower_bound=True, near_zero_init=True, dtype=self.dtype)(
        h + bias2.astype(h.dtype), train) * gain.astype(h.dtype)
    shortcut = x
    if x.shape[-1] != self.features:  # `_res_adaptive`
      shortcut = SNConv(self.features, dtype=self.dtype)(x, train)
    out = h + shortcut
    if self.downsample:
      out = nn.avg_pool(out, (2, 2), (2, 2), "VALID")
    return leaky_relu(out)


class IGEBMResNet(nn.Module):
  features: int = 128  # ResNet32: num_filters=128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, train: bool = False):
    del y
    f = self.features
    h = leaky_relu(SNConv(f, dtype=self.dtype)(x, train))
    for width, down in ((f, True), (f, False), (2 * f, True), (2 * f, False), (2 * f, True),
                        (2 * f, False)):
      h = SmartResBlock(width, down, dtype=self.dtype)(h, train)
    h = jax.nn.relu(h).sum(axis=(1, 2))
    return nn.Dense(1, dtype=self.dtype)(h).astype(jnp.float32)


class IGEBMMnist(nn.Module):
  features: int = 64  # train.py --num_filters
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, train: bool = False):
    del y
    f = self.features
    h = leaky_relu(SNConv(64, dtype=self.dtype)(x, train))
    for width in (f, 2 * f, 4 * f):
      h = leaky_relu(SNConv(width, kernel=4, stride=2, dtype=self.dtype)(h, train))
    h = leaky_relu(SNDense(2 * f, dtype=self.dtype)(h.reshape(h.shape[0], -1), train))
    return nn.Dense(1, dtype=self.dtype)(h).astype(jnp.float32)
