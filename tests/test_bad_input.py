"""A table of bad inputs across every entry point (issue: bad input and damaged files). Each
case runs in-process through tests/clirun.py (one interpreter per entry point) and must end in
exit code 2 with one `error:` line that names the input, no traceback, and nothing lost: the
trained run it points at keeps its checkpoints, and a rejected `main` config writes no workdir.
More cases live beside the features they guard (test_train, test_evaluate, test_cli)."""

import os

import numpy as np

from tests import clirun

TINY = "--config=configs/digits.py:tiny"


def _bad_sets(folder: str) -> dict[str, str]:
  """OOD .npz files that must be refused before any model work, by name."""
  os.makedirs(folder, exist_ok=True)
  paths = {}

  def save(name, **arrays):
    paths[name] = os.path.join(folder, name + ".npz")
    np.savez(paths[name], **arrays)

  save("nan", images=np.full((20, 8, 8, 1), np.nan, np.float32))
  save("empty", images=np.zeros((0, 8, 8, 1), np.float32))
  save("objects", images=np.array([None] * 4, dtype=object))
  save("not_images", images=np.zeros((20, 64), np.float32))  # other sizes are resized
  save("too_bright", images=np.full((20, 8, 8, 1), 1.5, np.float32))
  save("levels_over_255", images=np.full((20, 8, 8, 1), 300, np.int64))
  save("no_arrays")
  save("strings", images=np.array(["a", "b"]))
  paths["random_bytes"] = os.path.join(folder, "random_bytes.npz")
  with open(paths["random_bytes"], "wb") as f:
    f.write(np.random.default_rng(0).bytes(2000))
  paths["truncated_zip"] = os.path.join(folder, "truncated_zip.npz")
  np.savez(paths["truncated_zip"], images=np.zeros((50, 8, 8, 1), np.float32))
  with open(paths["truncated_zip"], "r+b") as f:
    f.truncate(os.path.getsize(paths["truncated_zip"]) // 2)
  paths["not_a_file"] = os.path.join(folder, "missing.npz")
  return paths


def _assert_one_line_exit_2(result: dict, expected: str) -> None:
  said = result["stderr"]
  assert result["code"] == 2, (result["argv"], said[-2000:])
  assert "Traceback" not in said, (result["argv"], said[-3000:])
  errors = [line for line in said.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, (result["argv"], said[-2000:])
  assert expected in errors[0], (result["argv"], errors[0])


def test_main_rejects_bad_configs_before_touching_the_workdir(tmp_path):
  cases = [
      (["--config.seed=-1"], "seed"),
      (["--config.train.num_steps=0"], "train.num_steps"),
      (["--config.train.batch_size=0"], "train.batch_size"),
      (["--config.langevin.num_steps=0"], "langevin.num_steps"),
      (["--config.langevin.step_size=-1"], "langevin.step_size"),
      (["--config.langevin.noise_scale=-0.1"], "langevin.noise_scale"),
      (["--config.langevin.sampler=nuts"], "langevin.sampler"),
      # (noise_scale 3.2: T = 3.2² / (2·5) ≈ 1 at the digits' λ, where HMC/MALA are allowed)
      (["--config.langevin.sampler=hmc", "--config.langevin.leapfrog_steps=0", "--config.langevin.noise_scale=3.2"],
       "langevin.leapfrog_steps"),
      (["--config.langevin.sampler=hmc", "--config.langevin.grad_clip=0.01", "--config.langevin.noise_scale=3.2"],
       "langevin.grad_clip"),
      (["--config.optim.schedule=linear"], "optim.schedule"),
      (["--config.optim.name=sgd"], "optim.name"),
      (["--config.optim.final_lr_fraction=2"], "optim.final_lr_fraction"),
      (["--config.buffer.capacity=0"], "buffer.capacity"),
      (["--config.buffer.noise_restart_prob=1.5"], "buffer.noise_restart_prob"),
      (["--config.buffer.kind=lifo"], "buffer.kind"),
      (["--config.optim.learning_rate=-1"], "optim.learning_rate"),
      (["--config.optim.ema_decay=1.5"], "optim.ema_decay"),
      (["--config.loss.kl_form=wrong"], "loss.kl_form"),
      (["--config.model.name=nosuch"], "model.name"),
      (["--config.model.dtype=float8"], "model.dtype"),
      (["--config.data.name=nosuch"], "data.name"),
      (["--config.train.eval_every=-1"], "train.eval_every"),
      (["--config.eval.num=1"], "eval.num"),
      (["--config.augment.blur_kernel=4"], "augment.blur_kernel"),
      (["--config.guard.lr_factor=0"], "guard.lr_factor"),
      (["--config.langevin.sampler=mala", "--config.loss.kl_all_steps=True", "--config.langevin.noise_scale=3.2"],
       "loss.kl_all_steps"),
      (["--config.langevin.sampler=hmc", "--config.loss.kl_all_steps=True", "--config.langevin.noise_scale=3.2"],
       "loss.kl_all_steps"),
      (["--config.langevin.sampler=mala"], "float32 rounding"),  # the digits' T = 1e-7
      (["--config.buffer.per_device=True", "--config.loss.kl_all_steps=True",
        "--config.loss.kl_samples=4"], "loss.kl_all_steps"),
  ]
  argvs = [[TINY, *args, f"--workdir={tmp_path}/w{i}"] for i, (args, _) in enumerate(cases)]
  argvs.append([TINY])  # no --workdir
  cases.append(([], "--workdir"))
  argvs.append([f"--workdir={tmp_path}/w_none"])  # no --config
  cases.append(([], "--config"))
  for (_, expected), result in zip(cases, clirun.run_cli("ebm_jax.main", argvs)):
    _assert_one_line_exit_2(result, expected)
  assert not [p for p in os.listdir(tmp_path) if p.startswith("w")], os.listdir(tmp_path)


def test_sample_evaluate_compose_and_ablation_reject_bad_input(digits_workdir, tmp_path):
  w = f"--workdir={digits_workdir}"
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  sets = _bad_sets(str(tmp_path / "sets"))
  before = sorted(os.listdir(os.path.join(digits_workdir, "checkpoints")))
  table = {
      "ebm_jax.sample": [
          ([w, "--steps=-1"], "--steps=-1"),
          ([w, "--block_steps=0"], "--block_steps=0"),
          ([w, "--final_steps=-1"], "--final_steps=-1"),
          ([w, "--step_size=0"], "--step_size=0"),
          ([w, "--step=7"], "--step=7"),
          ([w, f"--out={blocker}/x"], str(blocker)),
          ([f"--workdir={blocker}"], "no checkpoint"),
          ([w, "--label=-5"], "--label=-5"),
          ([w, "stray"], "unexpected argument"),
          ([], "--workdir"),
      ],
      "ebm_jax.evaluate": [
          *[(["ood", w, "--num=20", f"--ood={sets[name]}"], os.path.basename(sets[name]))
            for name in sets],
          (["ood", w, "--num=1"], "--num=1"),
          (["quality", w, "--steps=-2"], "--steps=-2"),
          (["quality", w, "--block_steps=0"], "--block_steps=0"),
          (["quality", w, "--step_size=-1"], "--step_size=-1"),
          (["quality", w, "--steps=3", "--eval_every=5"], "--eval_every"),
          (["classifier", "--data=digits", "--classifier_steps=0"], "--classifier_steps"),
          (["classifier", "--data=fashion_mnist", "--data_path=/no/such/folder"],
           "/no/such/folder"),
          (["export", w, "--num=4", f"--out={blocker}/x"], str(blocker)),
          (["quality", f"--workdir={blocker}"], "no checkpoint"),
          (["likelihood", w, "--chains=1"], "--chains"),
          (["likelihood", w, "--ais_step_size=0"], "--ais_step_size"),
          (["likelihood", w, "--sampler=ula"], "--sampler"),
      ],
      "ebm_jax.compose": [
          ([], "--model"),
          ([f"--model={digits_workdir}", "--op=not"], "two for --op=not"),
          ([f"--model={digits_workdir}", "--temperature=0"], "--temperature"),
          ([f"--model={tmp_path}/nothing"], "no checkpoint"),
          ([f"--model={digits_workdir}:5"], "unconditional"),
          ([f"--model={digits_workdir}", "--num=0"], "--num"),
          ([f"--model={digits_workdir}", "--op=or", "--score"], "--score"),
      ],
      "ebm_jax.experiments.ablation": [
          ([TINY, f"--workdir={tmp_path}/abl", "--rows=nosuch"], "--rows"),
          ([TINY, f"--workdir={tmp_path}/abl", "--seeds=a"], "--seeds"),
          ([TINY, f"--workdir={tmp_path}/abl", "--steps=0"], "--steps"),
          ([TINY, f"--workdir={tmp_path}/abl", "--num=1"], "--num"),
          ([TINY, f"--workdir={tmp_path}/abl", "--gap_bound=0"], "--gap_bound"),
          ([TINY], "--workdir"),
      ],
  }
  failures = []
  for module, cases in table.items():
    results = clirun.run_cli(module, [argv for argv, _ in cases])
    for (_, expected), result in zip(cases, results):
      try:
        _assert_one_line_exit_2(result, expected)
      except AssertionError as e:  # every case reported, not only the first
        failures.append(f"{module} {e}")
  assert not failures, "\n\n".join(failures)
  assert sorted(os.listdir(os.path.join(digits_workdir, "checkpoints"))) == before
  assert not os.path.exists(tmp_path / "abl" / "ablation.md")
