"""Config validation before any work is done, and the user-facing error type."""

from typing import Any

import ml_collections

from ebm_jax import buffer as buffer_lib
from ebm_jax import data, langevin, losses, models, state
from ebm_jax.errors import UserError  # re-exported: config_lib.UserError


# Each field's allowed values, taken from the module that owns them.
CHOICES = {
    "data.name": data.DATASETS,
    "model.name": models.NAMES,
    "model.norm": models.NORMS,
    "model.multiscale_layout": models.MULTISCALE_LAYOUTS,
    "model.conv": models.CONVS,
    "model.dtype": models.DTYPES,
    "buffer.kind": buffer_lib.KINDS,
    "langevin.sampler": langevin.SAMPLERS,
    "loss.kl_form": losses.KL_FORMS,
    "buffer.init": buffer_lib.INITS,
    "buffer.storage": buffer_lib.STORAGES,
    "debug.signal": ("TERM", "INT", "KILL"),
    "optim.name": state.OPTIMIZERS,
    "optim.schedule": state.SCHEDULES,
}


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts/ConfigDicts -> {"a.b": value}; tuples and lists become lists (JSON-like)."""
  if hasattr(d, "to_dict"):
    d = d.to_dict()
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) or hasattr(v, "to_dict"):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, (tuple, list)) else v
  return out


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint, as a ConfigDict with every field the code now reads:
  fields added since the checkpoint was written take their configs/default.py values (when
  the `configs` folder is importable, e.g. from the repository root); JSON lists go back to
  tuples where the field is a tuple."""
  try:
    from ebm_jax.configs import default  # pylint: disable=import-outside-toplevel
  except ImportError:
    return ml_collections.ConfigDict(saved)
  base = default.get_config()

  def merge(node: ml_collections.ConfigDict, values: dict) -> None:
    for k, v in values.items():
      if k not in node:  # a field this version no longer has: keep it, nothing reads it
        node[k] = v
      elif isinstance(v, dict) and isinstance(node[k], ml_collections.ConfigDict):
        merge(node[k], v)
      else:
        node[k] = tuple(v) if isinstance(v, list) and isinstance(node[k], tuple) else v

  merge(base, saved)
  return base


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises UserError naming the field and the allowed values for the first problem found."""
  for field, allowed in CHOICES.items():
    value = _get(config, field)
    if value not in allowed:
      raise UserError(f"config.{field}={value!r} is not allowed; choose one of {list(allowed)}")

  def check(ok: bool, field: str, requirement: str):
    if not ok:
      raise UserError(f"config.{field}={_get(config, field)!r}: {requirement}")

  t, lv, lo, bf, au = config.train, config.langevin, config.loss, config.buffer, config.augment
  check(t.batch_size >= 1, "train.batch_size", "must be at least 1")
  check(t.batch_size % num_devices == 0, "train.batch_size",
        f"must be divisible by the number of devices ({num_devices})")
  check(isinstance(config.seed, int) and config.seed >= 0, "seed", "must be an integer >= 0")
  check(t.num_steps >= 1, "train.num_steps", "must be at least 1")
  for f in ("log_every", "image_every", "checkpoint_every", "keep_every", "eval_every"):
    check(t[f] >= 0, f"train.{f}", "must be >= 0 (0 = never)")
  check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1")
  check(lv.num_steps >= 1, "langevin.num_steps", "must be at least 1")
  check(lv.step_size > 0, "langevin.step_size", "must be > 0")
  check(lv.noise_scale >= 0, "langevin.noise_scale", "must be >= 0")
  check(lv.grad_clip >= 0, "langevin.grad_clip", "must be >= 0 (0 = off)")
  if lv.sampler in ("mala", "hmc"):
    name = lv.sampler.upper()
    check(lv.noise_scale > 0 and not lv.anneal_noise, "langevin.noise_scale",
          f"{name} needs a constant noise_scale > 0 (its target temperature is sigma^2 / "
          "(2 lambda)); set langevin.anneal_noise=False")
    check(not config.loss.kl_all_steps, "loss.kl_all_steps",
          f"cannot be used with langevin.sampler='{lv.sampler}': differentiating the chain "
          f"through {name}'s accept/reject drops the dependence of the acceptance on the "
          "parameters; use langevin.sampler='ula' or loss.kl_all_steps=False")
    for field, lam in (("langevin.step_size", lv.step_size),
                       ("sample.step_size", config.sample.step_size if config.sample.step_size > 0
                        else lv.step_size)):
      langevin.check_metropolis_temperature(lv.sampler, lam, lv.noise_scale, field)
  if lv.sampler == "hmc":
    check(lv.grad_clip == 0, "langevin.grad_clip",
          "must be 0 with langevin.sampler='hmc' (HMC's leapfrog needs the exact gradient)")
    check(lv.leapfrog_steps >= 1, "langevin.leapfrog_steps", "must be at least 1")
  check(lv.unroll >= 0, "langevin.unroll", "must be >= 0 (steps per loop iteration; 0 = auto)")
  check(lv.host_segment >= -1, "langevin.host_segment",
        "must be -1 (auto), 0 (chain inside the step program) or a number of steps")
  check(not (bf.per_device and lo.kl_all_steps and lo.kl_samples not in (0, t.batch_size)),
        "loss.kl_all_steps", "replays the chain on the first kl_samples rows; with "
        "buffer.per_device=True the KL rows are spread over the devices: set loss.kl_samples=0")
  check(not bf.per_device or lo.kl_samples % num_devices == 0, "loss.kl_samples",
        f"must be 0 or divisible by the number of devices ({num_devices}) with "
        "buffer.per_device=True (each device's KL rows meet its own references)")
  check(0 <= lo.kl_samples <= t.batch_size, "loss.kl_samples",
        f"must be between 0 (whole batch) and train.batch_size ({t.batch_size})")
  check(lo.ent_num_refs >= 1, "loss.ent_num_refs", "must be at least 1")
  n_kl = lo.kl_samples or t.batch_size
  kl_per_device = n_kl // num_devices if n_kl % num_devices == 0 else n_kl  # step.kl_part
  check(lo.chunks >= 1 and (t.batch_size // num_devices) % lo.chunks == 0
        and kl_per_device % lo.chunks == 0, "loss.chunks",
        f"must be at least 1 and divide each device's rows: {t.batch_size // num_devices} of "
        f"the batch and {kl_per_device} KL rows (loss.kl_samples) on the number of devices "
        f"({num_devices})")
  check(lo.chunks == 1 or not lo.kl_all_steps, "loss.chunks",
        "must be 1 with loss.kl_all_steps=True (the replayed chain's noise is drawn for all "
        "KL rows at once, so chunks would change it)")
  check(lo.ent_eps > 0, "loss.ent_eps", "must be > 0")
  check(bf.capacity >= 1, "buffer.capacity", "must be at least 1")
  check(0 <= bf.noise_restart_prob <= 1, "buffer.noise_restart_prob", "must lie in [0, 1]")
  check(0 <= bf.data_prob <= 1, "buffer.data_prob", "must lie in [0, 1]")
  check(len(bf.noise_range) == 2 and bf.noise_range[0] < bf.noise_range[1], "buffer.noise_range",
        "must be (low, high) with low < high")
  for f in ("color_prob", "grayscale_prob", "blur_prob"):
    check(0 <= au[f] <= 1, f"augment.{f}", "must lie in [0, 1]")
  for f in ("crop_scale", "crop_ratio", "blur_sigma"):
    check(len(au[f]) == 2 and 0 < au[f][0] <= au[f][1], f"augment.{f}",
          "must be (low, high) with 0 < low <= high")
  check(au.crop_scale[1] <= 1, "augment.crop_scale", "must not exceed 1")
  check(au.blur_kernel == 0 or au.blur_kernel % 2 == 1, "augment.blur_kernel",
        "must be 0 (off) or an odd number of pixels")
  g, d = config.guard, config.debug
  check(g.max_abs_energy > 0, "guard.max_abs_energy", "must be > 0")
  check(g.max_energy_gap > 0, "guard.max_energy_gap", "must be > 0")
  check(g.patience >= 1, "guard.patience", "must be at least 1")
  check(g.max_recoveries >= 0, "guard.max_recoveries", "must be >= 0")
  check(g.window >= 1, "guard.window", "must be at least 1 step")
  check(0 < g.lr_factor <= 1, "guard.lr_factor", "must lie in (0, 1]")
  check(d.inject_nan_at_step >= 0, "debug.inject_nan_at_step", "must be >= 0 (0 = never)")
  check(d.signal_at_step >= 0, "debug.signal_at_step", "must be >= 0 (0 = never)")
  check(d.signal_process >= -1, "debug.signal_process", "must be >= -1 (-1 = every process)")
  check(d.kill_in_save_at_step >= 0, "debug.kill_in_save_at_step", "must be >= 0 (0 = never)")
  check(0 <= config.optim.ema_decay < 1, "optim.ema_decay", "must lie in [0, 1)")
  check(config.optim.learning_rate > 0, "optim.learning_rate", "must be > 0")
  check(0 <= config.optim.final_lr_fraction <= 1, "optim.final_lr_fraction", "must lie in [0, 1]")
  check(config.sample.num >= 1, "sample.num", "must be at least 1")
  check(config.eval.num >= 2, "eval.num", "must be at least 2")
  check(config.eval.classifier_steps >= 1, "eval.classifier_steps", "must be at least 1")
  check(config.eval.fid_num >= 2, "eval.fid_num", "must be at least 2")
  check(config.sample.batch_size >= 1, "sample.batch_size", "must be at least 1")
  if config.data.name in data.POINT_DATASETS:
    name = config.data.name
    check(config.model.name == "mlp", "model.name", f"{name} data needs the 'mlp' energy")
    check(config.buffer.storage == "float32", "buffer.storage",
          f"{name} data is not 8-bit images; use 'float32'")
    check(not config.langevin.clip_x, "langevin.clip_x",
          f"{name} data is not in [0, 1]: set langevin.clip_x=False")
  if config.data.name == "points":
    data.toy2d.check_points_box(config.data.path, tuple(config.buffer.noise_range))
