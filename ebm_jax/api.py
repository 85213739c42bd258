"""A trained run in three lines, read-only:

  import ebm_jax, jax
  run = ebm_jax.load("runs/digits")              # latest checkpoint (or step=N), EMA parameters
  x = run.sample(16, key=jax.random.key(0))      # (16, H, W, C) in [0, 1], test-time chain
  e = run.energy(x)                              # (16,) energies, heads summed

Nothing in the workdir is written or moved. The value is ebm_jax.restore.Run (config, settings,
info, model, variables, step), the one shape of a trained run that evaluation, composition and
the command lines take.
"""

from ebm_jax.restore import Run, load

__all__ = ["Run", "load"]
