"""Small file helpers the library shares: folders, atomic text files, the cache folder.

Errors name the path, never a command-line flag: the command modules (ebm_jax/cli.py) add the
flag's name where a path came from one.
"""

import os

from ebm_jax import errors


def make_dirs(path: str) -> None:
  """os.makedirs(path, exist_ok=True); a folder that cannot be created is a UserError."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f"{path}: cannot create this folder ({e.strerror})") from e


def write_text(path: str, text: str) -> None:
  """Writes a whole file atomically (a temporary beside it, then a rename); an unwritable path
  is a UserError naming it."""
  make_dirs(os.path.dirname(os.path.abspath(path)))
  try:
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  except OSError as e:
    raise errors.UserError(f"{path}: cannot write ({e.strerror})") from e


def cache_dir() -> str:
  """ebm_jax's cache folder: $EBM_JAX_CACHE, else ~/.cache/ebm_jax (feature classifiers, and
  XLA's compiled programs under xla/)."""
  return os.environ.get("EBM_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                      "ebm_jax"))
