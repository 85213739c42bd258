"""The one place that turns a model config into a Flax module (no registries)."""

import jax.numpy as jnp

from ebm_jax import settings as settings_lib
from ebm_jax.models.igebm import IGEBMMnist, IGEBMResNet
from ebm_jax.models.layers import SPECTRAL
from ebm_jax.models.nets import (ARCHITECTURES, ATTN, JEMEnergy, MLPEnergy, ResNetEnergy,
                                 paper_heads)

__all__ = ["SPECTRAL", "JEMEnergy", "make_model", "check_input_shape", "num_heads"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The allowed values of the model config, owned here (config_lib validates against them).
NAMES = tuple(ARCHITECTURES) + ("mlp", "igebm")
NORMS = ("instance_group", "layer", "none")
CONVS = ("ws", "spectral", "plain")
DTYPES = tuple(_DTYPES)
MULTISCALE_LAYOUTS = ("code", "paper")


def _heads(cfg: settings_lib.ModelSettings):
  heads = ARCHITECTURES[cfg.name](cfg.features, cfg.attention)
  if not cfg.multiscale:
    return heads[:1]
  return paper_heads(heads) if cfg.multiscale_layout == "paper" else heads


def num_heads(cfg: settings_lib.ModelSettings) -> int:
  return 1 if cfg.name in ("mlp", "igebm") else len(_heads(cfg))


def check_input_shape(cfg: settings_lib.ModelSettings, shape: tuple[int, ...]) -> None:
  """Raises ValueError, naming the config fields, if the net cannot take inputs of `shape`."""
  known = sorted(ARCHITECTURES) + ["mlp", "igebm"]
  if cfg.name not in known:
    raise ValueError(f"model.name={cfg.name!r} is not one of {known}")
  if cfg.multiscale_layout not in MULTISCALE_LAYOUTS:
    raise ValueError(f"model.multiscale_layout={cfg.multiscale_layout!r} is not one of "
                     f"{list(MULTISCALE_LAYOUTS)}")
  if cfg.dtype not in _DTYPES:
    raise ValueError(f"model.dtype={cfg.dtype!r} is not one of {sorted(_DTYPES)}")
  if cfg.name == "mlp":
    if len(shape) != 1:
      raise ValueError(f"model.name='mlp' takes flat data, but the data has shape {shape}; "
                       "use a convolutional net (resnet32, resnet128, mnist) for images")
    return
  if len(shape) != 3 or shape[0] != shape[1] or shape[2] not in (1, 3):
    raise ValueError(f"model.name={cfg.name!r} takes square images of shape (H, H, 1|3), "
                     f"but the data has shape {shape}")
  if cfg.name == "igebm":
    if cfg.multiscale or cfg.jem:
      raise ValueError("model.name='igebm' is IGEBM's single-scale energy net: set "
                       "model.multiscale=False and model.jem=False")
    if shape[0] < 8:
      raise ValueError(f"data.image_size={shape[0]} is too small for model.name='igebm' "
                       "(three halvings): use at least 8")
    return
  if cfg.features < 8 or cfg.features % 2:
    raise ValueError(f"model.features={cfg.features} must be an even number >= 8")
  size = shape[0]
  for k, (_, stages) in enumerate(_heads(cfg)):
    downs = sum(1 for s in stages if s != ATTN and s[1])
    if size < 2 ** (k + downs):
      raise ValueError(
          f"data.image_size={size} is too small for model.name={cfg.name!r}"
          f"{' with multiscale' if cfg.multiscale else ''}: it needs at least {2 ** (k + downs)} "
          "(each downsampling halves the image); choose a larger image_size or another net")
    for s in stages:
      if s != ATTN and cfg.norm == "instance_group" and s[0] > 128 and s[0] % 32:
        raise ValueError(f"model.features={cfg.features} gives {s[0]} channels, which "
                         "GroupNorm(32) cannot split; use a multiple of 32 above 128 channels")


def make_model(cfg: settings_lib.ModelSettings, shape: tuple[int, ...], num_classes: int = 0):
  """Builds the energy net for data of per-example `shape`; `num_classes` > 0 makes it
  conditional (one-hot labels through FiLM). Returns a Flax module whose
  `apply(variables, x, y=None, train=False)` gives energies of shape (B, S)."""
  check_input_shape(cfg, shape)
  dtype = _DTYPES[cfg.dtype]
  if cfg.name == "mlp":
    if cfg.jem:
      raise ValueError("model.jem=True needs a convolutional net (resnet32, resnet128, mnist)")
    return MLPEnergy(tuple(cfg.mlp_hidden), dtype=dtype)
  if cfg.name == "igebm":
    if num_classes:
      raise ValueError("model.name='igebm' is unconditional here (IGEBM's class-conditional "
                       "gains are not built): set data.attribute=''")
    net = IGEBMMnist if shape[-1] == 1 else IGEBMResNet
    return net(cfg.features, dtype=dtype)
  if cfg.conv not in CONVS:
    raise ValueError(f"model.conv={cfg.conv!r} is not one of {list(CONVS)}")
  if cfg.jem:
    if num_classes < 2:
      raise ValueError("model.jem=True needs labelled data: set data.attribute='class' (or a "
                       "shapes / CelebA attribute)")
    if cfg.multiscale:
      raise ValueError("model.jem=True is a single-scale classifier; set model.multiscale=False")
    stem, stages = _heads(cfg)[0]
    return JEMEnergy(stem, tuple(stages), num_classes, norm=cfg.norm, conv=cfg.conv,
                     dtype=dtype)
  return ResNetEnergy(tuple((stem, tuple(st)) for stem, st in _heads(cfg)), norm=cfg.norm,
                      conv=cfg.conv, conditional=num_classes > 0, dtype=dtype)
