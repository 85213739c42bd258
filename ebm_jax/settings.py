"""Typed settings: the config's sections as frozen dataclasses, built once at set-up.

`Settings.from_config(config)` turns an ml_collections ConfigDict (configs/default.py defines
every field and its source) into one frozen, hashable value with the same attribute paths
(`settings.langevin.step_size`). Set-up code (`train.Setup`, `ebm_jax.load`, the command
modules) builds it; everything below takes the typed value, so hot code closes over plain
frozen fields and no ConfigDict travels into jitted functions. A field the config has and the
dataclass lacks (or the reverse) is an error here, so the two cannot drift apart.
"""

import dataclasses
import typing
from typing import Any


@dataclasses.dataclass(frozen=True)
class DataSettings:
  name: str
  image_size: int
  channels: int
  path: str
  split: str
  attribute: str
  toy_density: str
  download: bool
  shuffle_buffer: int


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  name: str
  features: int
  multiscale: bool
  multiscale_layout: str
  attention: bool
  norm: str
  conv: str
  mlp_hidden: tuple[int, ...]
  dtype: str
  jem: bool


@dataclasses.dataclass(frozen=True)
class ChainSettings:
  """A Langevin chain (config.langevin): the one set of chain settings from which the training
  step, the loss's x̂ and the test-time sampler (`sampling.TestChain`, with its own λ) build
  their kernels (`langevin.kernel`). The defaults serve chains made by hand (tests, notebooks);
  from a config every field is given."""
  step_size: float  # λ
  noise_scale: float  # σ
  grad_clip: float = 0.0  # elementwise clip of ∇ₓE (IGEBM); 0 = off
  sampler: str = "ula"  # "ula", "mala" or "hmc"
  leapfrog_steps: int = 1  # hmc only
  clip_x: bool = True  # samples kept in [0, 1]
  num_steps: int = 0  # K of the training chain
  anneal_noise: bool = False  # σ_k = σ (K − k)/K in training
  unroll: int = 0  # chain_program.policy
  host_segment: int = -1  # chain_program.policy


@dataclasses.dataclass(frozen=True)
class LossSettings:
  cd: bool
  reg_weight: float
  opt: bool
  opt_weight: float
  ent: bool
  ent_weight: float
  ent_eps: float
  ent_num_refs: int
  ent_min_buffer: int
  kl_samples: int
  kl_form: str
  kl_all_steps: bool
  ce_weight: float
  chunks: int


@dataclasses.dataclass(frozen=True)
class BufferSettings:
  kind: str
  capacity: int
  storage: str
  noise_restart_prob: float
  noise_range: tuple[float, float]
  init: str
  data_prob: float
  augment: bool
  per_device: bool


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  flip: bool
  color_strength: float
  color_prob: float
  hue_scale: float
  grayscale_prob: float
  blur_kernel: int
  blur_prob: float
  blur_sigma: tuple[float, float]
  elastic_alpha: float
  elastic_sigma: float


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  name: str
  learning_rate: float
  schedule: str
  final_lr_fraction: float
  b1: float
  b2: float
  eps: float
  grad_clip_norm: float
  ema_decay: float
  ema_warmup: bool


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  batch_size: int
  num_steps: int
  log_every: int
  image_every: int
  log_grad_terms_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  keep_every: int


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  num: int
  classifier_steps: int
  fid: bool
  fid_num: int


@dataclasses.dataclass(frozen=True)
class GuardSettings:
  enabled: bool
  max_abs_energy: float
  max_energy_gap: float
  patience: int
  max_recoveries: int
  window: int
  lr_factor: float


@dataclasses.dataclass(frozen=True)
class DebugSettings:
  """Fault injection for tests (ebm_jax/faults.py); all off by default."""
  inject_nan_at_step: int
  inject_nan_times: int
  inject_value: float
  signal_at_step: int
  signal: str
  signal_process: int
  kill_in_save_at_step: int


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  num: int
  batch_size: int
  step_size: float
  num_blocks: int
  block_steps: int
  final_steps: int
  augment: bool


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every section of the config, typed and frozen."""
  seed: int
  data: DataSettings
  model: ModelSettings
  langevin: ChainSettings
  loss: LossSettings
  buffer: BufferSettings
  augment: AugmentSettings
  optim: OptimSettings
  train: TrainSettings
  eval: EvalSettings
  guard: GuardSettings
  debug: DebugSettings
  sample: SampleSettings

  @classmethod
  def from_config(cls, config) -> "Settings":
    """The typed value of a ConfigDict (or a plain nested dict) with exactly these fields."""
    return build(cls, config, "config")

  def replace(self, **sections) -> "Settings":
    return dataclasses.replace(self, **sections)


def of(config_or_settings) -> Settings:
  """A Settings as it is, or a ConfigDict (a notebook's, a test's) made typed: the one
  conversion library entry points that users call directly apply to their argument."""
  if isinstance(config_or_settings, Settings):
    return config_or_settings
  return Settings.from_config(config_or_settings)


def build(cls, node, where: str = "config"):
  """cls(**node), every field converted to its annotated type; the field sets must match."""
  node = node.to_dict() if hasattr(node, "to_dict") else dict(node)
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  missing, extra = sorted(set(names) - set(node)), sorted(set(node) - set(names))
  if missing or extra:
    raise ValueError(f"{where}: fields {missing} missing, {extra} not known to "
                     f"ebm_jax.settings.{cls.__name__}")
  return cls(**{n: _convert(hints[n], node[n], f"{where}.{n}") for n in names})


def _convert(kind, value, where: str) -> Any:
  if dataclasses.is_dataclass(kind):
    return build(kind, value, where)
  if typing.get_origin(kind) is tuple:
    args = typing.get_args(kind)
    value = tuple(value)
    types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
    if len(types) != len(value):
      raise ValueError(f"{where}={value!r}: expected {len(types)} values")
    return tuple(_convert(t, v, where) for t, v in zip(types, value))
  if kind is bool:
    return bool(value)
  if kind in (int, float, str):
    return kind(value)
  return value
