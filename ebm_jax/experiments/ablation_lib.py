"""The paper's ablation (ICD Table 2), resumable; the command line is
ebm_jax/experiments/ablation.py:

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
training workdir), then records: with --fid_num=N the standard FID of N EMA samples by the
test-time chain against the whole test split (eval/fid.py; the papers' N is 10,000), the
Fréchet distance and class coverage of samples in the feature space of the project's
classifier (offline datasets), the mean OOD AUROC over the offline OOD sets, and a stability
verdict. A row diverges when the energies become non-finite
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
from absl import logging

from ebm_jax import config_lib, errors, files, models, restore

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
                     classifier_steps: int = 1500, fid_num: int = 0) -> dict:
  """Sample quality and OOD AUROC of a trained row (offline datasets), under EMA params, and
  with fid_num the standard FID of that many samples against the whole test split."""
  from ebm_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import features, ood, quality  # pylint: disable=import-outside-toplevel
  trained = restore.load(workdir)
  data = trained.settings.data
  out: dict[str, Any] = {"evaluated_step": trained.step}
  if fid_num and len(trained.info.shape) == 3:
    from ebm_jax.eval import fid  # pylint: disable=import-outside-toplevel
    network = fid.load_network(cache_dir, log=logging.info)
    samples = quality.generate_samples(trained, fid_num, steps=None, seed=seed)
    scored = fid.score(network, samples, what="samples", data=data, ref="test", ref_num=0,
                       cache_dir=cache_dir, log=logging.info)
    out.update(fid=scored["fid"], fid_num=fid_num)
  if data.name not in data_lib.OFFLINE_DATASETS or len(trained.info.shape) != 3:
    out["note"] = "no offline classifier for this data: use `evaluate export` and an FID tool"
    return out
  net = features.load_or_train(data, data.attribute, cache_dir, steps=classifier_steps,
                               log=logging.info)
  q = quality.quality(trained, net, num=num, steps=None, seed=seed)
  out.update(frechet_distance=q["frechet_distance"],
             frechet_floor=q["frechet_distance_train_vs_test"],
             coverage_entropy=q["coverage"]["entropy"],
             classes_present=q["coverage"]["classes_present"],
             num_classes=q["coverage"]["num_classes"])
  sets = [s for s in OFFLINE_OOD if not (s == "digits" and data.name == "digits")]
  o = ood.ood(trained, sets, num=num, seed=seed)
  out["ood_auroc"] = {k: v["auroc"] for k, v in o["sets"].items()}
  out["ood_auroc_mean"] = float(np.mean(list(out["ood_auroc"].values())))
  return out


def run_row(name: str, config, workdir: str, *, seed: int, num: int, cache_dir: str,
            classifier_steps: int = 1500, fid_num: int = 0) -> dict:
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
                                   classifier_steps=classifier_steps, fid_num=fid_num))
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
                "fid": _mean(rs, "fid"), "fid_num": rs[0].get("fid_num"),
                "frechet_distance": _mean(rs, "frechet_distance"),
                "frechet_floor": _mean(rs, "frechet_floor"),
                "coverage_entropy": _mean(rs, "coverage_entropy"),
                "classes_present": _mean(rs, "classes_present"),
                "ood_auroc_mean": _mean(rs, "ood_auroc_mean"),
                "train_minutes": sum(r["train_seconds"] for r in rs) / 60})
  return out


def markdown(summary: list[dict], header: str) -> str:
  fid_nums = sorted({s["fid_num"] for s in summary if s.get("fid_num")})
  fid_head = f"FID ↓ ({', '.join(map(str, fid_nums))} samples vs test)" if fid_nums else "FID ↓"
  lines = [header, "",
           f"| row | adds | {fid_head} | own-classifier Fréchet ↓ | coverage entropy | classes "
           "| OOD AUROC (mean) | stability | train min |", "|---|---|---|---|---|---|---|---|---|"]
  for s in summary:
    if "skipped" in s:
      lines.append(f"| {s['row']} | {s['description']} | {s['skipped']} | | | | | | |")
    elif s.get("pending"):
      lines.append(f"| {s['row']} | {s['description']} | (not run yet) | | | | | | |")
    else:
      lines.append(
          f"| {s['row']} | {s['description']} | {_fmt(s['fid'], '.1f')} | "
          f"{_fmt(s['frechet_distance'], '.2f')} | "
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


def run_ablation(base: ml_collections.ConfigDict, workdir: str, *, row_names: list[str],
                 seeds: list[int], num: int, cache_dir: str, classifier_steps: int,
                 header: str, fid_num: int = 0) -> str:
  """Trains and evaluates every (row, seed) not finished yet; rewrites ablation.md, .json and
  energy_gap.png in workdir after each; returns the markdown table."""
  files.make_dirs(workdir)
  rows = [r for r in row_configs(base) if r[0] in row_names]
  results: dict[str, list[dict]] = {}

  def write() -> None:
    summary = summarize(rows, results)
    files.write_text(os.path.join(workdir, "ablation.json"),
                   json.dumps({"header": header, "rows": summary, "runs": results}, indent=2))
    files.write_text(os.path.join(workdir, "ablation.md"), markdown(summary, header))
    plot_gaps(rows, workdir, seeds, os.path.join(workdir, "energy_gap.png"))

  total = sum(len(seeds) for _, _, c in rows if not isinstance(c, str))
  done_runs, t_start, timed = 0, time.time(), 0
  for name, _, config in rows:
    if isinstance(config, str):
      logging.info("Row %s: %s", name, config)
      continue
    for seed in seeds:
      row_dir = os.path.join(workdir, _dirname(name), f"seed_{seed}")
      done = os.path.join(row_dir, "row_result.json")
      done_runs += 1
      if os.path.exists(done):
        with open(done) as f:
          results.setdefault(name, []).append(json.load(f))
        logging.info("Row %s seed %d: finished earlier, skipped", name, seed)
        continue
      eta = ((time.time() - t_start) / timed * (total - done_runs + 1)) if timed else None
      logging.info("Row %s seed %d (run %d/%d%s): training in %s", name, seed, done_runs,
                   total, "" if eta is None else f", ETA {eta / 60:.0f} min", row_dir)
      result = run_row(name, ml_collections.ConfigDict(config.to_dict()), row_dir, seed=seed,
                       num=num, cache_dir=cache_dir, classifier_steps=classifier_steps,
                       fid_num=fid_num)
      files.write_text(done, json.dumps(result, indent=2))
      timed += 1
      results.setdefault(name, []).append(result)
      write()
  write()
  return markdown(summarize(rows, results), header)
