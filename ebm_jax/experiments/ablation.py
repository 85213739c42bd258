"""The paper's ablation (ICD Table 2) as one resumable command.

  python -m ebm_jax.experiments.ablation --config=configs/digits.py --workdir=runs/ablation

Rows switch the method's parts on cumulatively, as Table 2 does, plus the KL-through-all-steps
option (paper A.4):

  base        L_CD + L_reg only: no KL, no augmentation, FIFO buffer, single scale (≈ IGEBM)
  +aug        data-augmentation transitions (buffer draws in training, blocks at test time)
  +L_opt      the first half of L_KL
  +L_ent      the second half of L_KL
  +multiscale 1/2 and 1/4 resolution heads (n/a where the net has one scale, e.g. mnist)
  +reservoir  reservoir sampling instead of the FIFO buffer: the full method
  +kl_all     L_opt differentiated through every chain step (paper A.4)

Every row trains for the same steps with the same seeds (WORKDIR/ROW/seed_S, an ordinary
training workdir), then records: the Fréchet distance and class coverage of samples in the
feature space of the project's classifier (offline datasets), the mean OOD AUROC over the
offline OOD sets, and a stability verdict. A row diverges when the energies become non-finite
or |E⁺ − E⁻| exceeds --gap_bound for --gap_patience consecutive steps (the divergence guard,
switched from rollback to stop); its metrics are then those of its last good checkpoint.
WORKDIR/ablation.md (the table), ablation.json and energy_gap.png (E⁺ − E⁻ over training for
every row, the paper's Fig. 9) are rewritten after every row. A rerun skips finished rows and
resumes an interrupted one from its checkpoints.
"""

import json
import os
import time
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from ebm_jax import cli, config_lib, errors, models

# (name, description, overrides added to every earlier row's)
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("base", "L_CD + L_reg; no KL, no augmentation, FIFO buffer, single scale",
     {"loss.opt": False, "loss.ent": False, "loss.kl_all_steps": False,
      "buffer.augment": False, "sample.augment": False, "buffer.kind": "fifo",
      "model.multiscale": False}),
    ("+aug", "data-augmentation transitions", {"buffer.augment": True, "sample.augment": True}),
    ("+L_opt", "KL loss, L_opt", {"loss.opt": True}),
    ("+L_ent", "KL loss, L_ent", {"loss.ent": True}),
    ("+multiscale", "multiscale heads", {"model.multiscale": True}),
    ("+reservoir", "reservoir sampling (the full method)", {"buffer.kind": "reservoir"}),
    ("+kl_all", "L_opt through all K steps (paper A.4)", {"loss.kl_all_steps": True}),
)
ROW_NAMES = tuple(r[0] for r in ROWS)
OFFLINE_OOD = ("uniform", "constant", "interpolation", "flip_v", "digits")


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *path, last = dotted.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value


def row_configs(base: ml_collections.ConfigDict) -> list[tuple[str, str, Any]]:
  """[(name, description, config or a reason it does not apply)], cumulative as Table 2."""
  out, overrides = [], {}
  previous_heads = None
  for name, description, changes in ROWS:
    overrides.update(changes)
    config = ml_collections.ConfigDict(base.to_dict())
    for k, v in overrides.items():
      _set(config, k, v)
    heads = None if config.model.name == "mlp" else models.num_heads(config.model)
    if name == "+multiscale" and heads == previous_heads:
      out.append((name, description, f"n/a: model.name={config.model.name!r} has one scale"))
      continue
    try:
      if heads is not None and len(config_shape(config)) == 3:
        models.check_input_shape(config.model, config_shape(config))
    except ValueError as e:
      out.append((name, description, f"n/a: {e}"))
      continue
    previous_heads = heads
    out.append((name, description, config))
  return out


def config_shape(config) -> tuple[int, ...]:
  if config.data.name == "toy2d":
    return (2,)
  return (config.data.image_size, config.data.image_size, config.data.channels)


def stability_config(config: ml_collections.ConfigDict, gap_bound: float, patience: int):
  """The divergence guard as a detector: it stops the run instead of rolling back."""
  config.guard.enabled = False
  config.guard.max_energy_gap = gap_bound
  config.guard.patience = patience
  return config


def _read_gap(workdir: str) -> tuple[list[int], list[float]]:
  from ebm_jax import metrics  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, metrics.METRICS_FILE)
  if not os.path.exists(path):
    return [], []
  rows = [r for r in metrics.read_jsonl(path) if "energy_gap" in r]
  return [r["step"] for r in rows], [r["energy_gap"] for r in rows]


def evaluate_workdir(workdir: str, *, num: int, cache_dir: str, seed: int,
                     classifier_steps: int = 1500) -> dict:
  """Sample quality and OOD AUROC of a trained row (offline datasets), under EMA params."""
  from ebm_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from ebm_jax import sample  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import features, ood, quality  # pylint: disable=import-outside-toplevel
  config, info, model, ema, step = sample.load_for_sampling(workdir)
  out: dict[str, Any] = {"evaluated_step": step}
  if config.data.name not in data_lib.OFFLINE_DATASETS or len(info.shape) != 3:
    out["note"] = "no offline classifier for this data: use `evaluate export` and an FID tool"
    return out
  try:
    net = features.load_classifier(config.data, config.data.attribute, cache_dir)
  except config_lib.UserError:
    logging.info("Training the %s feature classifier (cached in %s)", config.data.name,
                 cache_dir)
    net = features.train_classifier(config.data, config.data.attribute, seed=0,
                                    steps=classifier_steps, log=logging.info)
    features.save_classifier(net, cache_dir)
  q = quality.quality(config, model, ema, info, net, num=num, steps=None, seed=seed)
  out.update(frechet_distance=q["frechet_distance"],
             frechet_floor=q["frechet_distance_train_vs_test"],
             coverage_entropy=q["coverage"]["entropy"],
             classes_present=q["coverage"]["classes_present"],
             num_classes=q["coverage"]["num_classes"])
  sets = [s for s in OFFLINE_OOD if not (s == "digits" and config.data.name == "digits")]
  o = ood.ood(config, model, ema, info, sets, num=num, seed=seed)
  out["ood_auroc"] = {k: v["auroc"] for k, v in o["sets"].items()}
  out["ood_auroc_mean"] = float(np.mean(list(out["ood_auroc"].values())))
  return out


def run_row(name: str, config, workdir: str, *, seed: int, num: int, cache_dir: str,
            classifier_steps: int = 1500) -> dict:
  """Trains one row for one seed (resuming if interrupted) and evaluates it."""
  from ebm_jax import train  # pylint: disable=import-outside-toplevel
  config.seed = seed
  t0 = time.time()
  result: dict[str, Any] = {"row": name, "seed": seed, "steps": config.train.num_steps}
  try:
    train.train_and_evaluate(config, workdir)
    result.update(stable=True, diverged_at=None, cause=None)
  except errors.DivergenceError as e:
    logging.warning("Row %s seed %d diverged: %s", name, seed, e)
    result.update(stable=False, diverged_at=e.step, cause=e.cause)
  result["train_seconds"] = time.time() - t0
  t1 = time.time()
  try:
    result.update(evaluate_workdir(workdir, num=num, cache_dir=cache_dir, seed=seed,
                                   classifier_steps=classifier_steps))
  except config_lib.UserError as e:  # e.g. diverged before its first checkpoint
    result["note"] = str(e)
  result["eval_seconds"] = time.time() - t1
  return result


def _fmt(v, spec: str) -> str:
  return "–" if v is None else format(v, spec)


def _mean(results: list[dict], key: str):
  vals = [r[key] for r in results if r.get(key) is not None]
  return float(np.mean(vals)) if vals else None


def summarize(rows: list[tuple[str, str, Any]], results: dict[str, list[dict]]) -> list[dict]:
  out = []
  for name, description, config in rows:
    if isinstance(config, str):
      out.append({"row": name, "description": description, "skipped": config})
      continue
    rs = results.get(name, [])
    if not rs:
      out.append({"row": name, "description": description, "pending": True})
      continue
    diverged = [r for r in rs if not r["stable"]]
    verdict = ("stable" if not diverged else
               f"diverged ({len(diverged)}/{len(rs)}: " + ", ".join(
                   f"{r['cause']} at step {r['diverged_at']}" for r in diverged) + ")")
    out.append({"row": name, "description": description, "seeds": len(rs),
                "steps": rs[0]["steps"], "verdict": verdict,
                "frechet_distance": _mean(rs, "frechet_distance"),
                "frechet_floor": _mean(rs, "frechet_floor"),
                "coverage_entropy": _mean(rs, "coverage_entropy"),
                "classes_present": _mean(rs, "classes_present"),
                "ood_auroc_mean": _mean(rs, "ood_auroc_mean"),
                "train_minutes": sum(r["train_seconds"] for r in rs) / 60})
  return out


def markdown(summary: list[dict], header: str) -> str:
  lines = [header, "",
           "| row | adds | Fréchet distance ↓ | coverage entropy | classes | OOD AUROC (mean) "
           "| stability | train min |", "|---|---|---|---|---|---|---|---|"]
  for s in summary:
    if "skipped" in s:
      lines.append(f"| {s['row']} | {s['description']} | {s['skipped']} | | | | | |")
    elif s.get("pending"):
      lines.append(f"| {s['row']} | {s['description']} | (not run yet) | | | | | |")
    else:
      lines.append(
          f"| {s['row']} | {s['description']} | {_fmt(s['frechet_distance'], '.2f')} | "
          f"{_fmt(s['coverage_entropy'], '.2f')} | {_fmt(s['classes_present'], '.1f')} | "
          f"{_fmt(s['ood_auroc_mean'], '.3f')} | {s['verdict']} | "
          f"{s['train_minutes']:.1f} |")
  floors = [s["frechet_floor"] for s in summary if s.get("frechet_floor") is not None]
  if floors:
    lines += ["", f"Fréchet distance of the training split to the test split (the floor): "
              f"{np.mean(floors):.2f}."]
  return "\n".join(lines) + "\n"


def plot_gaps(rows, workdir: str, seeds: list[int], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, _, config in rows:
    if isinstance(config, str):
      continue
    for seed in seeds:
      steps, gaps = _read_gap(os.path.join(workdir, _dirname(name), f"seed_{seed}"))
      if steps:
        ax.plot(steps, gaps, label=name if seed == seeds[0] else None, lw=1)
  ax.set_yscale("symlog", linthresh=1.0)
  ax.set_xlabel("training step")
  ax.set_ylabel("E(x⁺) − E(x⁻)")
  ax.set_title("Energy gap over training (paper Fig. 9)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _dirname(row: str) -> str:
  return row.replace("+", "plus_")


FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Base config; rows change it cumulatively.",
                                  lock_config=True)
  cli.define_common_flags()  # --workdir: the ablation's folder, one sub-folder per row
  flags.DEFINE_list("rows", list(ROW_NAMES), f"Rows to run, of {', '.join(ROW_NAMES)}.")
  flags.DEFINE_list("seeds", ["0"], "Seeds; every row runs each.")
  flags.DEFINE_integer("steps", None, "Training steps per row (default: the config's).")
  flags.DEFINE_float("gap_bound", 1e3, "Divergence: |E+ - E-| above this ...")
  flags.DEFINE_integer("gap_patience", 10, "... for this many consecutive steps (or non-finite).")
  flags.DEFINE_integer("num", 500, "Samples and test images for the quality and OOD metrics.")
  flags.DEFINE_string("cache_dir", None, "Feature classifiers (default: $EBM_JAX_CACHE or "
                      "~/.cache/ebm_jax).")
  flags.DEFINE_integer("classifier_steps", 1500, "Steps of the feature classifier, trained "
                       "once per dataset when the cache has none.")


def run() -> None:
  base = cli.load_config_flag()
  if not FLAGS.workdir:
    raise config_lib.UserError("--workdir is required")
  unknown = [r for r in FLAGS.rows if r not in ROW_NAMES]
  if unknown:
    raise config_lib.UserError(f"--rows: unknown {unknown}; choose from {list(ROW_NAMES)}")
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise config_lib.UserError(f"--seeds must be integers: {FLAGS.seeds}") from e
  if FLAGS.steps is not None and FLAGS.steps < 1:
    raise config_lib.UserError("--steps must be at least 1")
  if (FLAGS.gap_bound <= 0 or FLAGS.gap_patience < 1 or FLAGS.num < 2
      or FLAGS.classifier_steps < 1):
    raise config_lib.UserError("--gap_bound must be > 0, --gap_patience >= 1, --num >= 2, "
                               "--classifier_steps >= 1")
  base = ml_collections.ConfigDict(base.to_dict())
  if FLAGS.steps is not None:
    base.train.num_steps = FLAGS.steps
  stability_config(base, FLAGS.gap_bound, FLAGS.gap_patience)
  config_lib.validate(base)
  cache_dir = FLAGS.cache_dir or cli.cache_dir()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  rows = [r for r in row_configs(base) if r[0] in FLAGS.rows]
  results: dict[str, list[dict]] = {}
  header = (f"Ablation of {base.data.name} ({base.model.name} F={base.model.features}), "
            f"{base.train.num_steps} steps per row, seeds {seeds}; divergence: non-finite or "
            f"|E+ − E−| > {FLAGS.gap_bound:g} for {FLAGS.gap_patience} steps.")

  def write() -> None:
    summary = summarize(rows, results)
    with open(os.path.join(FLAGS.workdir, "ablation.json"), "w") as f:
      json.dump({"header": header, "rows": summary, "runs": results}, f, indent=2)
    with open(os.path.join(FLAGS.workdir, "ablation.md"), "w") as f:
      f.write(markdown(summary, header))
    plot_gaps(rows, FLAGS.workdir, seeds, os.path.join(FLAGS.workdir, "energy_gap.png"))

  for name, _, config in rows:
    if isinstance(config, str):
      logging.info("Row %s: %s", name, config)
      continue
    for seed in seeds:
      row_dir = os.path.join(FLAGS.workdir, _dirname(name), f"seed_{seed}")
      done = os.path.join(row_dir, "row_result.json")
      if os.path.exists(done):
        with open(done) as f:
          results.setdefault(name, []).append(json.load(f))
        logging.info("Row %s seed %d: finished earlier, skipped", name, seed)
        continue
      logging.info("Row %s seed %d: training in %s", name, seed, row_dir)
      result = run_row(name, ml_collections.ConfigDict(config.to_dict()), row_dir, seed=seed,
                       num=FLAGS.num, cache_dir=cache_dir,
                       classifier_steps=FLAGS.classifier_steps)
      with open(done + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
      os.replace(done + ".tmp", done)
      results.setdefault(name, []).append(result)
      write()
  write()
  with open(os.path.join(FLAGS.workdir, "ablation.md")) as f:
    print(f.read())


def main(argv) -> None:
  cli.run_guarded(lambda: (cli.no_positional(argv), run()))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
