"""Test set-up: the repository root on sys.path (for `configs`), and a persistent XLA
compilation cache shared by the test processes and the CLIs they start.

Many tests compile the same tiny training step (in-process and in `python -m ebm_jax.main`
subprocesses); the cache, keyed by the compiled program, lets later ones load it instead of
compiling it again. It lives in .pytest_cache/ (git-ignored); delete it to start cold.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Before jax is imported anywhere: jax reads these when it initialises its config, and the
# subprocesses the tests start inherit them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
