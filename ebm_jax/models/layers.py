"""Building blocks of the energy networks (reference description §3.1), NHWC.

Initialisation follows PyTorch's defaults, as the authors' nets do: kernels and biases
U(±1/sqrt(fan_in)). Flax's `variance_scaling(1/3, "fan_in", "uniform")` is that kernel init;
biases need the fan-in, so layers are created inside `__call__` where it is known.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

SPECTRAL = "spectral"  # Flax collection holding spectral-norm power-iteration vectors


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def swish(x):
  return x * jax.nn.sigmoid(x)


def conv(features: int, in_features: int, kernel: int = 3, dtype: Any = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A plain stride-1 'same' convolution with PyTorch-default initialisation."""
  return nn.Conv(features, (kernel, kernel), padding="SAME", dtype=dtype,
                 kernel_init=torch_kernel_init,
                 bias_init=torch_bias_init(kernel * kernel * in_features), name=name)


def dense(features: int, in_features: int, dtype: Any = jnp.float32,
          name: str | None = None) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(in_features), name=name)


class WSConv(nn.Module):
  """3x3 convolution with weight standardisation (ref §3.1, `WSConv2d`).

  Each output filter is centred over (kh, kw, in) and divided by its unbiased standard
  deviation plus 1e-5, as the reference does, before convolving.
  """
  features: int
  kernel: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = self.kernel * self.kernel * x.shape[-1]
    w = self.param("kernel", torch_kernel_init,
                   (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
    b = self.param("bias", torch_bias_init(fan_in), (self.features,), jnp.float32)
    w = w - w.mean(axis=(0, 1, 2), keepdims=True)
    w = w / (w.std(axis=(0, 1, 2), keepdims=True, ddof=1) + 1e-5)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b.astype(self.dtype)


class BlockConv(nn.Module):
  """The convolution inside residual blocks: weight-standardised, spectral-normed or plain."""
  features: int
  kind: str = "ws"  # "ws" | "spectral" | "plain"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.kind == "ws":
      return WSConv(self.features, dtype=self.dtype)(x)
    layer = conv(self.features, x.shape[-1], dtype=self.dtype)
    if self.kind == "plain":
      return layer(x)
    # IGEBM: one power iteration per training forward; the vectors live in the "spectral"
    # collection and are only updated when the caller asks (train=True, mutable=["spectral"]).
    return nn.SpectralNorm(layer, n_steps=1, collection_name=SPECTRAL)(x, update_stats=train)


def norm_layer(kind: str, features: int) -> nn.Module | None:
  """Normalisation after each block conv (ref §3.1): IN up to 128 channels, else GN(32)."""
  if kind == "none":
    return None
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1), feature_axes=-1)
  if kind == "instance_group":
    if features <= 128:
      return nn.InstanceNorm(epsilon=1e-5)
    return nn.GroupNorm(num_groups=32, epsilon=1e-5)
  raise ValueError(f"unknown norm {kind!r}; expected 'instance_group', 'layer' or 'none'")


class FiLM(nn.Module):
  """h <- gain(y) * h + bias(y), with the raw linear output as gain (ref §3.1)."""

  @nn.compact
  def __call__(self, h, y):
    gain_bias = dense(2 * h.shape[-1], y.shape[-1])(y.astype(jnp.float32))
    gain, bias = jnp.split(gain_bias.astype(h.dtype), 2, axis=-1)
    return gain[:, None, None, :] * h + bias[:, None, None, :]


def avg_pool_down(x):
  """3x3 average pool, stride 2, pad 1, padding counted (PyTorch count_include_pad=True)."""
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


class ResBlock(nn.Module):
  """`CondResBlock` of the reference, with the residual add restored (ref §7.1 bug 1).

  h = swish(FiLM(N(conv1 x))); h = swish(FiLM(N(conv2 h))); out = h + x; and when
  downsampling, out = swish(avgpool(conv3x3(out))) with 2F channels if `rescale`.
  """
  features: int
  downsample: bool = False
  rescale: bool = False
  norm: str = "instance_group"
  conv: str = "ws"
  conditional: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, train: bool = False):
    if x.shape[-1] != self.features:
      raise ValueError(f"ResBlock({self.features}) got {x.shape[-1]} input channels")
    h = x
    for _ in range(2):
      h = BlockConv(self.features, self.conv, self.dtype)(h, train)
      norm = norm_layer(self.norm, self.features)
      if norm is not None:
        h = norm(h)
      if self.conditional:
        h = FiLM()(h, y)
      h = swish(h)
    out = h + x
    if self.downsample:
      out_features = 2 * self.features if self.rescale else self.features
      out = conv(out_features, self.features, dtype=self.dtype)(out)
      out = swish(avg_pool_down(out))
    return out


class SelfAttention(nn.Module):
  """SAGAN self-attention (ref §3.1 `Self_Attn`); the output gain gamma starts at 0."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    q = conv(max(c // 8, 1), c, kernel=1, dtype=self.dtype)(x).reshape(b, h * w, -1)
    k = conv(max(c // 8, 1), c, kernel=1, dtype=self.dtype)(x).reshape(b, h * w, -1)
    v = conv(c, c, kernel=1, dtype=self.dtype)(x).reshape(b, h * w, c)
    attn = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k), axis=-1)  # over keys
    out = jnp.einsum("bqk,bkc->bqc", attn, v).reshape(b, h, w, c)
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
    return gamma.astype(out.dtype) * out + x
