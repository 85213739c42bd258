"""A JEM model's classifier: test accuracy of its logits under the EMA parameters."""

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import data as data_lib
from ebm_jax.errors import UserError
from ebm_jax.restore import Run


def accuracy(run: Run, num: int, seed: int = 0, batch: int = 250) -> dict:
  """Test accuracy of a JEM model's classifier head under the EMA parameters."""
  if not run.settings.model.jem:
    raise UserError("`accuracy` is for JEM models (model.jem=True); this workdir's model is "
                    "an energy net without class logits")
  model, variables = run.model, run.variables
  x, labels = data_lib.test_images(run.settings.data, num, seed=seed)
  fn = jax.jit(lambda v: model.apply(variables, v, method=type(model).logits).argmax(-1))
  pred = np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch], jnp.float32)))
                         for i in range(0, len(x), batch)])
  return {"test_accuracy": float((pred == labels.argmax(-1)).mean()), "num": int(len(x))}
