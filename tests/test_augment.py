"""Tests for ebm_jax.augment: per-sample MCMC augmentation transitions."""

import functools

import chex
import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ebm_jax import augment

_SIZE = 16
_BATCH = 4


def _cfg(**overrides) -> ml_collections.ConfigDict:
  """The default `augment` block with every op on (elastic included), plus overrides."""
  cfg = ml_collections.ConfigDict(dict(
      crop_scale=(0.3, 1.0), crop_ratio=(0.75, 4.0 / 3.0), flip=True, color_strength=1.0,
      color_prob=0.8, hue_scale=0.2, grayscale_prob=0.2, blur_kernel=5, blur_prob=0.5,
      blur_sigma=(0.1, 2.0), elastic_alpha=2.0, elastic_sigma=3.0))
  cfg.update(overrides)
  return cfg


_OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, color_strength=0.0,
            grayscale_prob=0.0, blur_kernel=0, elastic_alpha=0.0)


@functools.lru_cache(maxsize=None)
def _full_batch_fn():
  """One jitted batch augmenter with every op on, shared by tests to compile it once per shape."""
  transition = augment.make_transition(_cfg())
  return jax.jit(lambda key, x: augment.augment_batch(transition, key, x))


def _images(channels: int, seed: int = 0, size: int = _SIZE, batch: int = _BATCH) -> jax.Array:
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, size, size, channels))


def _smooth_image(size: int = _SIZE) -> np.ndarray:
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  base = 0.5 + 0.2 * np.sin(2 * np.pi * yy / size) * np.cos(2 * np.pi * xx / size)
  return np.stack([base, 0.8 * base, 1.0 - base], axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------- full transition


@pytest.mark.parametrize("channels", [1, 3])
def test_full_transition_shape_dtype_range(channels):
  x = _images(channels)
  y = np.asarray(_full_batch_fn()(jax.random.PRNGKey(1), x))
  assert y.shape == x.shape
  assert y.dtype == np.float32
  assert np.all(np.isfinite(y))
  assert y.min() >= 0.0 and y.max() <= 1.0
  # Every sample is changed (crop and elastic alone make that almost sure).
  assert np.all(np.abs(y - np.asarray(x)).reshape(_BATCH, -1).max(axis=1) > 1e-3)


def test_determinism_per_key():
  fn = _full_batch_fn()
  x = _images(3)
  a = np.asarray(fn(jax.random.PRNGKey(7), x))
  b = np.asarray(fn(jax.random.PRNGKey(7), x))
  c = np.asarray(fn(jax.random.PRNGKey(8), x))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3


def test_batch_uses_one_key_per_sample_and_traces_once():
  # A cheaper config than the full one: the point is the vmap/jit plumbing.
  transition = augment.make_transition(_cfg(color_strength=0.0, elastic_alpha=0.0))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(key, x):
    return augment.augment_batch(transition, key, x)

  # The same image in every slot: per-sample keys must still give different outputs.
  x = jnp.broadcast_to(_images(3, batch=1), (_BATCH, _SIZE, _SIZE, 3))
  y1 = np.asarray(fn(jax.random.PRNGKey(0), x))
  y2 = np.asarray(fn(jax.random.PRNGKey(1), x))  # would raise on a retrace
  assert np.abs(y1 - y2).max() > 1e-3
  assert np.abs(y1[0] - y1[1]).max() > 1e-3


# ---------------------------------------------------------------------------- identities


@pytest.mark.parametrize("channels", [1, 3])
def test_all_ops_off_is_identity_and_untraced(channels):
  transition = augment.make_transition(_cfg(**_OFF))
  x = _images(channels)[0]
  y = jax.jit(transition)(jax.random.PRNGKey(3), x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  # Off ops must not appear in the trace: no convolutions, resampling matmuls or branches.
  jaxpr = str(jax.make_jaxpr(transition)(jax.random.PRNGKey(3), x))
  for primitive in ("conv_general_dilated", "dot_general", "cond", "switch", "gather"):
    assert primitive not in jaxpr, primitive


def test_each_op_at_strength_zero_is_identity():
  key = jax.random.PRNGKey(4)
  x = _images(3)[0]
  xn = np.asarray(x)
  checks = {
      "crop": augment.random_resized_crop(key, x, (1.0, 1.0), (1.0, 1.0)),
      "flip": augment.random_flip(key, x, prob=0.0),
      "color_s0": augment.color_jitter(key, x, strength=0.0, prob=1.0, hue_scale=0.2),
      "color_p0": augment.color_jitter(key, x, strength=1.0, prob=0.0, hue_scale=0.2),
      "gray": augment.random_grayscale(key, x, prob=0.0),
      "blur_k0": augment.random_gaussian_blur(key, x, 0, 1.0, (0.1, 2.0)),
      "blur_p0": augment.random_gaussian_blur(key, x, 5, 0.0, (0.1, 2.0)),
      "elastic": augment.elastic(key, x, alpha=0.0, sigma=3.0),
  }
  for name, y in checks.items():
    np.testing.assert_allclose(np.asarray(y), xn, atol=1e-6, rtol=0, err_msg=name)


def test_flip_twice_is_identity():
  key = jax.random.PRNGKey(5)
  x = _images(3)[0]
  once = augment.random_flip(key, x, prob=1.0)
  np.testing.assert_array_equal(np.asarray(once), np.asarray(x)[:, ::-1])
  np.testing.assert_array_equal(np.asarray(augment.random_flip(key, once, prob=1.0)),
                                np.asarray(x))


# ---------------------------------------------------------------------------- blur


def _reference_blur(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
  radius = kernel_size // 2
  taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
  taps /= taps.sum()
  padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  h, w, _ = image.shape
  rows = sum(t * padded[i:i + h] for i, t in enumerate(taps))
  return sum(t * rows[:, j:j + w] for j, t in enumerate(taps))


def test_blur_matches_reflect101_reference():
  image = np.asarray(_images(3)[0])
  out = augment.gaussian_blur(jnp.asarray(image), 1.3, 5)
  np.testing.assert_allclose(np.asarray(out), _reference_blur(image, 1.3, 5), atol=1e-5)


def test_blur_preserves_mean():
  blur = jax.jit(lambda k, x: augment.random_gaussian_blur(k, x, 5, 1.0, (0.1, 2.0)))
  const = jnp.full((_SIZE, _SIZE, 3), 0.37, jnp.float32)
  smooth = jnp.asarray(_smooth_image())
  for seed in range(3):
    key = jax.random.PRNGKey(seed)
    # Exactly (every pixel, borders included) for a constant image.
    np.testing.assert_allclose(np.asarray(blur(key, const)), 0.37, atol=1e-5)
    np.testing.assert_allclose(np.asarray(blur(key, smooth)).mean(axis=(0, 1)),
                               np.asarray(smooth).mean(axis=(0, 1)), atol=5e-3)
  # With a large sigma the smooth image really is smoothed (guards against a no-op blur).
  strong = augment.gaussian_blur(smooth, 2.0, 5)
  assert np.asarray(strong).std() < 0.9 * np.asarray(smooth).std()


def test_blur_small_sigma_is_near_identity():
  x = _images(3)[0]
  y = augment.random_gaussian_blur(jax.random.PRNGKey(0), x, 5, 1.0, (0.05, 0.05))
  np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


# ---------------------------------------------------------------------------- crop


def _reference_resized_crop(image: np.ndarray, top: int, left: int, h: int,
                            w: int) -> np.ndarray:
  """Bilinear, pixel centres, clamped at the image border, sampled from the full image."""
  height, width, _ = image.shape

  def axis(start, extent, n, out_n):
    coords = np.clip(start + (np.arange(out_n) + 0.5) * extent / out_n - 0.5, 0, n - 1)
    lo = np.floor(coords).astype(int)
    return lo, np.minimum(lo + 1, n - 1), coords - lo

  y0, y1, fy = axis(top, h, height, height)
  x0, x1, fx = axis(left, w, width, width)
  fy, fx = fy[:, None, None], fx[None, :, None]
  return ((1 - fy) * (1 - fx) * image[y0][:, x0] + (1 - fy) * fx * image[y0][:, x1] +
          fy * (1 - fx) * image[y1][:, x0] + fy * fx * image[y1][:, x1])


@pytest.mark.parametrize("box", [(1, 2, 5, 4), (0, 0, 3, 8), (0, 0, 8, 8)])
def test_resized_crop_matches_numpy_bilinear(box):
  image = np.asarray(_images(3, size=8)[0])
  out = augment.resized_crop(jnp.asarray(image), *(jnp.int32(v) for v in box))
  np.testing.assert_allclose(np.asarray(out), _reference_resized_crop(image, *box), atol=1e-5)


def test_crop_params_statistics():
  scale, ratio = (0.3, 1.0), (0.75, 4.0 / 3.0)
  keys = jax.random.split(jax.random.PRNGKey(0), 1000)
  top, left, h, w = (np.asarray(a) for a in jax.jit(jax.vmap(
      lambda k: augment.crop_params(k, _SIZE, _SIZE, scale, ratio)))(keys))
  assert np.all((h > 0) & (w > 0) & (top >= 0) & (left >= 0))
  assert np.all((top + h <= _SIZE) & (left + w <= _SIZE))
  frac = h * w / _SIZE ** 2
  assert scale[0] < frac.mean() < scale[1]
  assert frac.min() < 0.45 and frac.std() > 0.1  # the whole range is explored
  # Aspect ratios stay in range up to the rounding of w and h to whole pixels.
  assert np.all(w / h >= ratio[0] * 0.8) and np.all(w / h <= ratio[1] / 0.8)
  # Offsets are spread over the admissible positions, not pinned to a corner or the centre.
  slack = _SIZE - h
  assert np.any(top[slack > 2] == 0) and np.any(top[slack > 2] == slack[slack > 2])


def test_crop_params_fallback_is_central_crop():
  # With ratios in [2, 3] no full-area box fits a square image: torchvision falls back to a
  # central crop with the ratio clamped to 2, i.e. full width and half height.
  top, left, h, w = augment.crop_params(jax.random.PRNGKey(0), _SIZE, _SIZE, (1.0, 1.0),
                                        (2.0, 3.0))
  assert (int(top), int(left), int(h), int(w)) == (_SIZE // 4, 0, _SIZE // 2, _SIZE)


# ---------------------------------------------------------------------------- colour


def test_jitter_on_grey_is_brightness_only():
  # Contrast, saturation and hue leave a constant grey image unchanged, so only the
  # multiplicative brightness factor in [max(0, 1 - 0.8 s), 1 + 0.8 s] can act.
  strength, value = 0.5, 0.5
  grey = jnp.full((8, 8, 3), value, jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), 64)
  out = np.asarray(jax.jit(jax.vmap(
      lambda k: augment.color_jitter(k, grey, strength, 1.0, 0.2)))(keys))
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1, :1], out.shape), atol=1e-6)
  factors = out[:, 0, 0, 0] / value
  assert np.all(factors >= 1 - 0.8 * strength - 1e-6)
  assert np.all(factors <= 1 + 0.8 * strength + 1e-6)
  assert factors.max() - factors.min() > 0.5  # factors are drawn over the whole range


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_probability(channels):
  x = _images(channels)[0]
  key = jax.random.PRNGKey(2)
  off = augment.color_jitter(key, x, 1.0, 0.0, 0.2)
  on = augment.color_jitter(key, x, 1.0, 1.0, 0.2)
  np.testing.assert_array_equal(np.asarray(off), np.asarray(x))
  assert on.shape == x.shape
  assert np.abs(np.asarray(on) - np.asarray(x)).max() > 1e-2
  assert float(on.min()) >= 0.0 and float(on.max()) <= 1.0


def test_pix_hue_delta_is_fraction_of_circle():
  # The jitter passes hue deltas to dm-pix in torchvision's unit (fraction of the hue circle).
  red = jnp.zeros((2, 2, 3)).at[..., 0].set(1.0)
  green = jnp.zeros((2, 2, 3)).at[..., 1].set(1.0)
  np.testing.assert_allclose(np.asarray(pix.adjust_hue(red, 1.0 / 3.0)),
                             np.asarray(green), atol=1e-5)


def test_grayscale_prob_one_is_luma():
  x = _images(3)[0]
  y = np.asarray(augment.random_grayscale(jax.random.PRNGKey(0), x, prob=1.0))
  xn = np.asarray(x)
  luma = 0.299 * xn[..., 0] + 0.587 * xn[..., 1] + 0.114 * xn[..., 2]
  for c in range(3):
    np.testing.assert_allclose(y[..., c], luma, atol=2e-4)  # dm-pix's red weight is 0.2989
  # Single-channel images are already grey.
  g = _images(1)[0]
  np.testing.assert_array_equal(
      np.asarray(augment.random_grayscale(jax.random.PRNGKey(0), g, 1.0)), np.asarray(g))


def test_elastic_moves_pixels_and_stays_in_range():
  x = jnp.asarray(_smooth_image())
  y = np.asarray(augment.elastic(jax.random.PRNGKey(0), x, alpha=3.0, sigma=2.0))
  assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0
  assert np.abs(y - np.asarray(x)).max() > 1e-2


def _displacement(alpha: float, sigma: float, key=0) -> np.ndarray:
  """The displacement field (H, W, 2) in pixels that `augment.elastic` applies, read off two
  linear ramps (bilinear sampling reproduces a ramp exactly): ramp(p + d) − ramp(p) = slope·d.
  Only the interior, where no sample reaches the border, is returned."""
  n, slope = 32, 0.5 / 31
  r = 0.25 + slope * np.arange(n, dtype=np.float32)
  ramps = np.stack(np.meshgrid(r, r, indexing="ij"), -1)  # (H, W, 2): row ramp, column ramp
  y = np.asarray(augment.elastic(jax.random.PRNGKey(key), jnp.asarray(ramps), alpha, sigma))
  return ((y - ramps) / slope)[8:-8, 8:-8]


def test_elastic_displacement_scales_with_alpha_and_is_smooth_over_sigma():
  d1, d2 = _displacement(1.0, 3.0), _displacement(2.0, 3.0)
  rms = lambda d: float(np.sqrt(np.mean(np.sum(d ** 2, -1))))
  assert 0.05 < rms(d1) < 1.0  # a fraction of a pixel per unit alpha at sigma = 3
  np.testing.assert_allclose(rms(d2), 2 * rms(d1), rtol=0.02)  # linear in alpha
  np.testing.assert_allclose(d2, 2 * d1, atol=0.05)

  def neighbour_correlation(d):
    a, b = d[:-1, :, 0].ravel(), d[1:, :, 0].ravel()
    return float(np.corrcoef(a, b)[0, 1])

  smooth, rough = neighbour_correlation(d1), neighbour_correlation(_displacement(1.0, 0.5))
  assert smooth > 0.9 and rough < 0.6, (smooth, rough)  # sigma sets the field's smoothness
