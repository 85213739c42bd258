"""Random data-augmentation transitions for MCMC chains (Du et al. 2021, §2.3).

Each op is a pure, jittable and vmappable function `(key, image_hwc, ...) -> image_hwc` on one
float image in [0, 1] with 1 or 3 channels. `make_transition` chains them in the order of the
authors' torchvision pipeline (random resized crop -> flip -> colour jitter -> grayscale -> blur,
plus the elastic deformation proposed for MNIST-like data by the EBM critique, §6.3), and
`augment_batch` maps a transition over an NHWC batch with one key per sample.

Semantic notes (where dm-pix, the JAX image library used here, differs from torchvision):
  * `pix.adjust_hue` shifts hue by `delta` in fractions of the hue circle, the same unit as
    torchvision's `hue_factor`, so hue deltas are passed through unchanged.
  * `pix.adjust_contrast` blends each channel with its own spatial mean (TensorFlow's
    convention); torchvision blends with the mean of the grayscale image. Identical for C = 1.
  * `pix.adjust_saturation` scales the HSV saturation (TensorFlow's convention); torchvision
    blends with the grayscale image.
  * `pix.rgb_to_grayscale` uses the rec601 weights (0.2989, 0.587, 0.114); torchvision uses
    0.299 for red, a difference below 1e-4 per pixel.
  * The crop is resampled from the full image (pixels just outside the crop box contribute to
    the border samples), not from a cut-out as torchvision does; no antialiasing.
"""

import math
from typing import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp

from ebm_jax import settings as settings_lib

Transition = Callable[[jax.Array, jax.Array], jax.Array]

# torchvision's RandomResizedCrop draws at most this many candidate boxes before falling back.
_CROP_ATTEMPTS = 10


def _clip01(image: jax.Array) -> jax.Array:
  return jnp.clip(image, 0.0, 1.0)


def crop_params(key: jax.Array, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Draws a crop box with torchvision's `RandomResizedCrop.get_params` algorithm.

  All attempts are drawn at once and the first valid one is selected, so the function is
  jittable; the fallback is torchvision's central crop with the ratio clamped to `ratio`.

  Args:
    key: a JAX PRNG key.
    height: image height in pixels (static).
    width: image width in pixels (static).
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio width / height.

  Returns:
    (top, left, crop_height, crop_width) as int32 scalars.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = float(height * width)
  target_area = area * jax.random.uniform(
      k_area, (_CROP_ATTEMPTS,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
      k_ratio, (_CROP_ATTEMPTS,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  # jnp.round rounds half to even, like Python's round() in torchvision.
  w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(valid)  # index of the first True; 0 when there is none

  # The fallback depends only on static shapes and ratios, so it is computed in Python.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fb_w, fb_h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fb_w, fb_h = int(round(height * max(ratio))), height
  else:
    fb_w, fb_h = width, height

  accepted = jnp.any(valid)
  crop_w = jnp.where(accepted, w[first], fb_w)
  crop_h = jnp.where(accepted, h[first], fb_h)
  # torch.randint(0, n - c + 1): uniform over the admissible integer offsets.
  rand_top = jax.random.randint(k_top, (), 0, height - crop_h + 1)
  rand_left = jax.random.randint(k_left, (), 0, width - crop_w + 1)
  top = jnp.where(accepted, rand_top, (height - fb_h) // 2)
  left = jnp.where(accepted, rand_left, (width - fb_w) // 2)
  return (top.astype(jnp.int32), left.astype(jnp.int32), crop_h.astype(jnp.int32),
          crop_w.astype(jnp.int32))


def resized_crop(image: jax.Array, top: jax.Array, left: jax.Array, crop_height: jax.Array,
                 crop_width: jax.Array) -> jax.Array:
  """Resizes the box (top, left, crop_height, crop_width) of `image` back to its full size.

  Bilinear, no antialiasing, pixel-centre convention: output centre o + 0.5 samples the input
  at top + (o + 0.5) * crop_height / H. Box parameters may be traced.

  Args:
    image: HWC float image.
    top: row of the box's top edge.
    left: column of the box's left edge.
    crop_height: box height in pixels (> 0).
    crop_width: box width in pixels (> 0).

  Returns:
    The resampled HWC image, same shape and dtype as `image`.
  """
  height, width, _ = image.shape
  scale = jnp.stack([height / crop_height.astype(jnp.float32),
                     width / crop_width.astype(jnp.float32)])
  translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
  out = jax.image.scale_and_translate(
      image, image.shape, spatial_dims=(0, 1), scale=scale, translation=translation,
      method="linear", antialias=False)
  return out.astype(image.dtype)


def random_resized_crop(key: jax.Array, image: jax.Array, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> jax.Array:
  """torchvision-style RandomResizedCrop back to the input size (see `crop_params`).

  Args:
    key: a JAX PRNG key.
    image: HWC float image.
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio width / height.

  Returns:
    The cropped and resized HWC image.
  """
  height, width, _ = image.shape
  box = crop_params(key, height, width, scale, ratio)
  return resized_crop(image, *box)


def random_flip(key: jax.Array, image: jax.Array, prob: float = 0.5) -> jax.Array:
  """Flips the image left-right with probability `prob`."""
  return pix.random_flip_left_right(key, image, probability=prob)


def _factor_range(strength: jax.Array | float) -> tuple[jax.Array, jax.Array]:
  # SimCLR: brightness/contrast/saturation jitter of 0.8 s, i.e. factors in
  # [max(0, 1 - 0.8 s), 1 + 0.8 s] as in torchvision's ColorJitter.
  spread = 0.8 * jnp.asarray(strength, jnp.float32)
  return jnp.maximum(0.0, 1.0 - spread), 1.0 + spread


def color_jitter(key: jax.Array, image: jax.Array, strength: float, prob: float,
                 hue_scale: float) -> jax.Array:
  """SimCLR colour jitter of strength `strength`, applied with probability `prob`.

  Brightness (multiplicative), contrast and saturation factors are drawn from
  U(max(0, 1 - 0.8 s), 1 + 0.8 s) and the hue shift from U(-hue_scale s, hue_scale s) (fraction of
  the hue circle). The ops run in a random order per sample, each followed by clipping to [0, 1],
  as torchvision's ColorJitter does. For one channel only brightness and contrast apply, since
  saturation and hue leave grey images unchanged.

  Args:
    key: a JAX PRNG key.
    image: HWC float image in [0, 1], C = 1 or 3.
    strength: jitter strength s.
    prob: probability that the jitter is applied at all.
    hue_scale: maximum hue shift per unit strength.

  Returns:
    The jittered HWC image in [0, 1].
  """
  k_apply, k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 6)
  lo, hi = _factor_range(strength)
  brightness = jax.random.uniform(k_b, (), minval=lo, maxval=hi)
  contrast = jax.random.uniform(k_c, (), minval=lo, maxval=hi)
  saturation = jax.random.uniform(k_s, (), minval=lo, maxval=hi)
  max_hue = hue_scale * jnp.asarray(strength, jnp.float32)
  hue = jax.random.uniform(k_h, (), minval=-max_hue, maxval=max_hue)

  branches = [
      lambda x: _clip01(x * brightness.astype(x.dtype)),
      lambda x: _clip01(pix.adjust_contrast(x, contrast)),
  ]
  # Decided from the static shape so the HSV round trips are not traced for grey images.
  if image.shape[-1] == 3:
    branches += [
        lambda x: _clip01(pix.adjust_saturation(x, saturation)),
        lambda x: _clip01(pix.adjust_hue(x, hue)),
    ]
  order = jax.random.permutation(k_perm, len(branches))

  def jitter(x: jax.Array) -> jax.Array:
    for i in range(len(branches)):
      x = jax.lax.switch(order[i], branches, x)
    return x

  apply = jax.random.bernoulli(k_apply, prob)
  return jax.lax.cond(apply, jitter, lambda x: x, image)


def random_grayscale(key: jax.Array, image: jax.Array, prob: float) -> jax.Array:
  """Replaces an RGB image by its luma (kept as 3 channels) with probability `prob`.

  Identity for single-channel images.
  """
  if image.shape[-1] != 3:
    return image
  apply = jax.random.bernoulli(key, prob)
  return jax.lax.cond(apply, lambda x: pix.rgb_to_grayscale(x, keep_dims=True).astype(x.dtype),
                      lambda x: x, image)


def gaussian_blur(image: jax.Array, sigma: jax.Array | float, kernel_size: int) -> jax.Array:
  """Gaussian blur with reflect-101 borders (cv2's default), output the size of the input.

  Args:
    image: HWC float image.
    sigma: standard deviation of the kernel in pixels (may be traced).
    kernel_size: kernel size in pixels (static, odd; even sizes are rounded up like dm-pix).

  Returns:
    The blurred HWC image.
  """
  radius = int(kernel_size) // 2
  if radius == 0:
    return image
  # dm-pix pads with zeros under "SAME", which darkens borders; reflect padding keeps a
  # constant image constant, as cv2/torchvision do.
  padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  return pix.gaussian_blur(padded, sigma, 2 * radius + 1, padding="VALID").astype(image.dtype)


def random_gaussian_blur(key: jax.Array, image: jax.Array, kernel_size: int, prob: float,
                         sigma_range: tuple[float, float]) -> jax.Array:
  """With probability `prob`, blurs with sigma ~ U(sigma_range) (see `gaussian_blur`).

  Args:
    key: a JAX PRNG key.
    image: HWC float image.
    kernel_size: kernel size in pixels (static).
    prob: probability of blurring.
    sigma_range: (lo, hi) range of the kernel's standard deviation in pixels.

  Returns:
    The (possibly) blurred HWC image.
  """
  k_apply, k_sigma = jax.random.split(key)
  sigma = jax.random.uniform(k_sigma, (), minval=sigma_range[0], maxval=sigma_range[1])
  apply = jax.random.bernoulli(k_apply, prob)
  return jax.lax.cond(apply, lambda x: gaussian_blur(x, sigma, kernel_size), lambda x: x, image)


def elastic(key: jax.Array, image: jax.Array, alpha: float, sigma: float) -> jax.Array:
  """Elastic deformation (Simard et al. 2003) via dm-pix, clipped to [0, 1].

  Args:
    key: a JAX PRNG key.
    image: HWC float image in [0, 1].
    alpha: displacement strength in pixels (may be traced).
    sigma: smoothness of the displacement field in pixels (static: it sets the kernel size).

  Returns:
    The deformed HWC image.
  """
  out = pix.elastic_deformation(key, image, alpha, float(sigma))
  return _clip01(out).astype(image.dtype)


def make_transition(cfg: settings_lib.AugmentSettings) -> Transition:
  """Builds the per-sample augmentation transition from the `augment` config block.

  Ops that the config switches off are left out of the trace entirely. Each op always gets the
  same sub-key, so switching one op on or off does not change the randomness of the others.

  Args:
    cfg: the `augment` ConfigDict (crop_scale, crop_ratio, flip, color_strength, color_prob,
      hue_scale, grayscale_prob, blur_kernel, blur_prob, blur_sigma, elastic_alpha,
      elastic_sigma).

  Returns:
    transition(key, image_hwc) -> image_hwc, clipped to [0, 1], same shape and dtype.
  """
  crop_scale = tuple(float(v) for v in cfg.crop_scale)
  crop_ratio = tuple(float(v) for v in cfg.crop_ratio)
  # Full-area square crops are the identity on the square images the nets take.
  crop_on = not (crop_scale == (1.0, 1.0) and crop_ratio == (1.0, 1.0))
  flip_on = bool(cfg.flip)
  color_strength = float(cfg.color_strength)
  color_prob = float(cfg.color_prob)
  hue_scale = float(cfg.hue_scale)
  color_on = color_strength > 0 and color_prob > 0
  grayscale_prob = float(cfg.grayscale_prob)
  gray_on = grayscale_prob > 0
  blur_kernel = int(cfg.blur_kernel)
  blur_prob = float(cfg.blur_prob)
  blur_sigma = tuple(float(v) for v in cfg.blur_sigma)
  blur_on = blur_kernel // 2 > 0 and blur_prob > 0
  elastic_alpha = float(cfg.elastic_alpha)
  elastic_sigma = float(cfg.elastic_sigma)
  elastic_on = elastic_alpha > 0

  def transition(key: jax.Array, image: jax.Array) -> jax.Array:
    dtype = image.dtype
    k_crop, k_flip, k_color, k_gray, k_blur, k_elastic = jax.random.split(key, 6)
    x = image
    if crop_on:
      x = random_resized_crop(k_crop, x, crop_scale, crop_ratio)
    if flip_on:
      x = random_flip(k_flip, x, 0.5)
    if color_on:
      x = color_jitter(k_color, x, color_strength, color_prob, hue_scale)
    if gray_on:
      x = random_grayscale(k_gray, x, grayscale_prob)
    if blur_on:
      x = random_gaussian_blur(k_blur, x, blur_kernel, blur_prob, blur_sigma)
    if elastic_on:
      x = elastic(k_elastic, x, elastic_alpha, elastic_sigma)
    return _clip01(x).astype(dtype)

  return transition


def augment_batch(transition: Transition, key: jax.Array, images: jax.Array) -> jax.Array:
  """Applies `transition` to each image of an NHWC batch with its own key.

  Args:
    transition: per-sample transition, e.g. from `make_transition`.
    key: a JAX PRNG key, split into one key per sample.
    images: NHWC batch.

  Returns:
    The augmented NHWC batch.
  """
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(transition)(keys, images)
