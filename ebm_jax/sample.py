"""Sampling from a checkpoint: library functions and the `python -m ebm_jax.sample` CLI.

The test-time chain (paper §2.3, ref §5) starts from uniform noise and runs
num_blocks × (block_steps Langevin steps + one augmentation transition), then final_steps
plain steps, with the EMA parameters. Output: a PNG grid (a scatter plot for 2-D data) and an
.npz with the samples (and their labels for conditional models).

  python -m ebm_jax.sample --workdir=runs/digits [--num=64 --steps=200 --out=DIR]
"""

import math
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from ebm_jax import cli, config_lib, models, sampling


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
  """(N, H, W, C) in [0, 1] -> one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def save_png(grid: np.ndarray, path: str, scale: int = 1) -> None:
  from PIL import Image
  img = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  if img.shape[-1] == 1:
    img = img[..., 0]
  pil = Image.fromarray(img)
  if scale > 1:
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
  pil.save(path)


def save_scatter(points: np.ndarray, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
  ax.set_aspect("equal")
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def default_labels(num: int, num_classes: int, label: int = -1) -> np.ndarray | None:
  """One-hot labels: all `label`, or cycling through the classes when label < 0."""
  if num_classes == 0:
    return None
  idx = np.full(num, label) if label >= 0 else np.arange(num) % num_classes
  return np.eye(num_classes, dtype=np.float32)[idx]


def sample_to_files(config, model, info, params, model_state, outdir: str, name: str, *,
                    num: int | None = None, steps: int | None = None, seed: int = 0,
                    label: int = -1, augment: bool | None = None) -> str:
  """Generates config.sample.num samples (or `num`) and writes NAME.png and NAME.npz."""
  cli.make_dirs(outdir, "--out")
  num = num or config.sample.num
  labels = default_labels(num, info.num_classes, label)
  shape = tuple(info.shape)
  sampler = sampling.Sampler(sampling.model_energy(model),
                             sampling.settings_from_config(config, steps=steps), shape,
                             sampling.transition_from_config(config, shape, augment),
                             config.sample.batch_size)
  x, diag = sampler.draw(jax.random.key(seed), num, labels, {"params": params, **model_state})
  png = os.path.join(outdir, f"{name}.png")
  if len(info.shape) == 3:
    save_png(make_grid(x), png, scale=max(1, 128 // info.shape[0]))
  else:
    save_scatter(x, png)
  arrays = {"samples": x, "energy_per_step": diag["energy"],
            "grad_norm_per_step": diag["grad_norm"], "accept_rate_per_step": diag["accept_rate"]}
  if config.langevin.sampler == "mala":
    logging.info("MALA acceptance rate %.3f (mean over steps and chains)",
                 float(diag["accept_rate"].mean()))
  if labels is not None:
    arrays["labels"] = labels.argmax(-1)
  np.savez_compressed(os.path.join(outdir, f"{name}.npz"), **arrays)
  return png


def ema_variables(ema: dict) -> dict:
  """The Flax variables of a checkpoint's `ema` item: {"params": EMA params, **model_state}."""
  return {"params": ema["params"], **ema["model_state"]}


def load_for_sampling(workdir: str, step: int | None = None):
  """(config, data_info, model, ema variables, step) from a read-only checkpoint manager."""
  from ebm_jax import checkpoint as checkpoint_lib  # the training-free path needs only this
  directory = checkpoint_lib.checkpoint_dir(workdir)
  if not os.path.isdir(directory) and "://" not in directory:
    raise config_lib.UserError(f"no checkpoint in --workdir={workdir} (no {directory}); "
                               "train first: python -m ebm_jax.main --config=... --workdir=...")
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
  steps = ckpt.manager.all_steps()
  if not steps:
    raise config_lib.UserError(f"no checkpoint in --workdir={workdir}; train first")
  if step is not None and step not in steps:
    raise config_lib.UserError(f"--step={step} is not among the checkpoints {sorted(steps)}")
  failures = []
  for candidate in ([step] if step is not None else sorted(steps, reverse=True)):
    try:
      config, info, model, ema = _restore_ema(ckpt, candidate)
    except config_lib.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (a damaged checkpoint: the previous)
      failures.append((candidate, e))
      continue
    for bad, error in failures:
      logging.warning("The checkpoint at step %d in %s could not be read (%s: %s); using step "
                      "%d instead (read-only: nothing was moved).", bad, workdir,
                      type(error).__name__, str(error).strip().splitlines()[0][:200] if str(error)
                      else "", candidate)
    ckpt.close()
    return config, info, model, ema, candidate
  ckpt.close()
  bad, error = failures[0]
  raise config_lib.UserError(
      f"no readable checkpoint in --workdir={workdir}: step(s) {[s for s, _ in failures]} "
      f"cannot be read (step {bad}: {type(error).__name__}); rerun training to write one")


def _restore_ema(ckpt, step: int):
  """(config, info, model, EMA variables) of one checkpoint step."""
  saved = ckpt.restore_config(step)
  config = config_lib.with_defaults(saved["config"])
  info = SimpleNamespace(**saved["data_info"])
  info.shape = tuple(info.shape)
  model = models.make_model(config.model, info.shape, info.num_classes)
  x = jnp.zeros((1,) + info.shape)
  y = jnp.zeros((1, info.num_classes)) if info.num_classes else None
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, y))
  abstract = {"params": variables["params"],
              "model_state": {k: v for k, v in variables.items() if k != "params"}}
  return config, info, model, ckpt.restore_ema(abstract, step)


FLAGS = flags.FLAGS


def define_flags():
  cli.define_common_flags()
  flags.DEFINE_integer("num", None, "Number of samples (default: config.sample.num).")
  flags.DEFINE_integer("steps", None, "Total Langevin steps (default: from config.sample).")
  flags.DEFINE_float("step_size", None, "Langevin step size (default: the training one).")
  flags.DEFINE_integer("block_steps", None, "Steps between augmentation transitions.")
  flags.DEFINE_bool("augment", None, "Augmentation transitions between blocks.")
  flags.DEFINE_integer("label", -1, "Class/attribute index for conditional models "
                       "(-1: cycle through classes).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/samples).")


def run(argv) -> None:
  cli.no_positional(argv)
  if not FLAGS.workdir:
    raise config_lib.UserError("--workdir is required")
  for name in ("num", "steps", "block_steps"):
    value = getattr(FLAGS, name)
    if value is not None and value < (1 if name != "steps" else 0):
      raise config_lib.UserError(f"--{name}={value} must be positive")
  if FLAGS.step_size is not None and FLAGS.step_size <= 0:
    raise config_lib.UserError(f"--step_size={FLAGS.step_size} must be > 0")
  config, info, model, ema, step = load_for_sampling(FLAGS.workdir, FLAGS.step)
  if FLAGS.label >= max(info.num_classes, 1) or (FLAGS.label >= 0 and not info.num_classes):
    raise config_lib.UserError(f"--label={FLAGS.label}: the model has {info.num_classes} "
                               "classes" + (" (it is unconditional)" if not info.num_classes
                                            else ""))
  if FLAGS.step_size is not None:
    config.sample.step_size = FLAGS.step_size
  if FLAGS.block_steps is not None:
    config.sample.block_steps = FLAGS.block_steps
  out = FLAGS.out or os.path.join(FLAGS.workdir, "samples")
  path = sample_to_files(config, model, info, ema["params"], ema["model_state"], out,
                         f"sample_step{step}_seed{FLAGS.seed}", num=FLAGS.num,
                         steps=FLAGS.steps, seed=FLAGS.seed, label=FLAGS.label,
                         augment=FLAGS.augment)
  print(f"wrote {path} and {path[:-4]}.npz")


def main(argv) -> None:
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
