"""The CPU XLA flag set that the entry points install for users (cli.apply_xla_flags: oneDNN
convolutions as custom calls, no XNNPACK / YNN fusions, the old fusion emitter), at XLA's default
optimisation level, against the flags the rest of the suite compiles under (tests/conftest.py
adds LLVM -O0 to XLA_FLAGS, and apply_xla_flags leaves a set XLA_FLAGS alone): without this test
no training step or sampling chain ever runs under the users' flags.

A fresh process with a user's environment (no XLA_FLAGS, no compilation cache that could hold
programs compiled under -O0) imports the training entry point first, as `python -m ebm_jax.main`
does, checks that XLA_FLAGS is the flag set before XLA starts (so the test cannot pass under the
suite's flags), runs one training step and one sampling call on a state and batch that this test
made and saves what they return; the same step and call in the test process must agree with it
to float rounding.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ebm_jax import cli, sampling, train
from ebm_jax.configs import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import sys
inputs, outputs, tests = sys.argv[1:]
sys.argv = ["ebm_jax.main"]
import ebm_jax.main  # first, as `python -m ebm_jax.main` runs: cli.apply_xla_flags() at its top
import os
from jax._src import xla_bridge
from ebm_jax import cli
flags = os.environ.get("XLA_FLAGS")
assert flags == cli.CPU_XLA_FLAGS, f"the user flag set is not on: XLA_FLAGS={flags!r}"
assert not xla_bridge.backends_are_initialized()  # XLA reads XLA_FLAGS when it starts, later
sys.path.insert(0, tests)
import numpy as np
import test_user_flags
got = test_user_flags.step_and_sample(None, dict(np.load(inputs)))
np.savez(outputs, **got, xla_flags=np.array(os.environ["XLA_FLAGS"]))
"""


def _config():
  c = digits.get_config("tiny")
  c.data.download = False
  return c


def step_and_sample(setup, inputs: dict) -> dict:
  """One training step on the state and batch in `inputs` (as `_inputs` made them), and one
  sampling call (the config's test-time chain) from the state's EMA parameters: {name: array}."""
  setup = setup or train.Setup(_config())
  leaves, treedef = jax.tree.flatten(setup.abstract_state)
  state = jax.device_put(
      jax.tree.unflatten(treedef, [inputs[f"state/{i}"] for i in range(len(leaves))]),
      setup.state_sharding)
  batch = setup.global_batch({"image": inputs["image"], "label": inputs["label"]})
  variables = jax.device_get({"params": state.ema_params, **state.model_state})
  new, metrics, negatives = jax.device_get(setup.step_fn(state, batch))
  samples, diag = sampling.for_model(setup.config, setup.model, setup.info.shape).draw(
      jax.random.key(1), setup.config.sample.num, None, variables)
  out = {f"metrics/{k}": np.asarray(v) for k, v in metrics.items()}
  out.update({"negatives": negatives, "samples": samples, "sample_energy": diag["energy"],
              "buffer": new.buffer.data})
  for name in ("params", "ema_params", "opt_state"):
    out.update({f"{name}/{jax.tree_util.keystr(path, simple=True, separator='/')}": np.asarray(x)
                for path, x in jax.tree_util.tree_flatten_with_path(getattr(new, name))[0]})
  return out


def _inputs(setup) -> dict:
  """The state after two steps (a partly filled buffer, so the entropy term acts; Adam moments
  that are not zero) and the third step's batch."""
  state, stream = setup.init_state(), setup.stream(0)
  for _ in range(2):
    state, _, _ = setup.step_fn(state, setup.global_batch(next(stream)))
  assert int(state.buffer.size) > setup.config.loss.ent_min_buffer
  inputs = {f"state/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(
      jax.device_get(state)))}
  return {**inputs, **next(stream)}


@pytest.mark.slow  # a process compiling the step and the sampler at XLA's default level
def test_users_xla_flags_train_and_sample_like_the_suites(tmp_path):
  setup = train.Setup(_config())
  inputs = _inputs(setup)
  np.savez(tmp_path / "inputs.npz", **inputs)
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "EBM_JAX_XLA_FLAGS",
                      "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env["PYTHONPATH"] = ROOT
  proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "inputs.npz"),
                         str(tmp_path / "outputs.npz"), os.path.join(ROOT, "tests")],
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with np.load(tmp_path / "outputs.npz") as f:
    user = dict(f)
  assert str(user.pop("xla_flags")) == cli.CPU_XLA_FLAGS
  assert "--xla_backend_optimization_level" in os.environ["XLA_FLAGS"]  # here: the suite's
  want = step_and_sample(setup, inputs)
  assert sorted(user) == sorted(want)
  # Images, energies and every logged value: rtol 1e-4 (atol one millionth of a pixel or an
  # energy of about 0.05, so that values at the chains' clip bound 0 compare too).
  for name in [n for n in want if not n.startswith(("params/", "ema_params/", "opt_state/"))]:
    tol = {"atol": 1} if name == "buffer" else {"rtol": 1e-4, "atol": 1e-6}
    # buffer: x_K (within 2e-6 here) stored as 8-bit levels can round across a level boundary
    np.testing.assert_allclose(user[name], want[name], err_msg=name, **tol)
  # The gradient (Adam's first moment: with b1 = 0 the clipped gradient itself) and its square
  # (the second moment): rtol 1e-4, atol 1e-4 of the largest element. Elements near zero carry
  # the rounding of sums of much larger terms: the biases ahead of a normalisation, whose
  # gradient is zero but for rounding, measured 1e-10 against 0.1 elsewhere.
  assert all(np.array_equal(user[n], want[n]) for n in want  # Adam's step counts
             if n.startswith("opt_state/") and "/mu/" not in n and "/nu/" not in n)
  for moment in ("/mu/", "/nu/"):
    names = [n for n in want if n.startswith("opt_state/") and moment in n]
    scale = max(np.abs(want[n]).max() for n in names)
    for name in names:
      np.testing.assert_allclose(user[name], want[name], rtol=1e-4, atol=1e-4 * scale,
                                 err_msg=name)
  # Parameters: atol one learning rate (EMA: its share (1 - decay) of one). Adam moves an element
  # by lr·g/(sqrt(v) + eps) of up to about lr whatever g's size, so those rounding-level
  # gradients move their biases by amounts that differ between the processes (measured 2.8e-5
  # apart with lr 1e-3); the rest agree to rtol 1e-4.
  lr, decay = setup.config.optim.learning_rate, setup.config.optim.ema_decay
  for name in [n for n in want if n.startswith(("params/", "ema_params/"))]:
    atol = lr * ((1 - decay) if name.startswith("ema_params/") else 1)
    np.testing.assert_allclose(user[name], want[name], rtol=1e-4, atol=atol, err_msg=name)
