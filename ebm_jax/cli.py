"""What every command-line entry point shares: quiet library logs, and user errors printed as
one line without a traceback. --debug shows the traceback.

Exit codes: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint (rerun to continue);
2 a mistake in flags, config or data (EXIT_USER_ERROR); 3 training diverged more often than
the divergence guard allows (EXIT_DIVERGED); 4 another process of a distributed run was lost
(ebm_jax.distributed.EXIT_PEER_LOST).
"""

import logging as py_logging
import os
import sys
from typing import Callable

from absl import flags

from ebm_jax import errors, files

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class _QuietLibraries(py_logging.Filter):
  """Drops INFO lines from orbax (dozens per checkpoint); warnings and errors pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def quiet_library_logs() -> None:
  for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
  py_logging.getLogger("absl").addFilter(_QuietLibraries())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`, with every mistake in
  the flags as one line naming the flag, exit code 2. ml_collections reports an unknown config
  field or a config file that fails as a KeyError/AttributeError/ValueError, which absl would
  otherwise show as a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:  # an error inside the config file
      head = message.split("\n")[0].rstrip(":")
      message = f"{head}: {message.strip().splitlines()[-1]}"
  except (KeyError, AttributeError) as e:
    field = str(e).strip("'\"")
    culprits = [a for a in argv[1:] if a.startswith("--config") and field in a]
    message = (f"{culprits[0] if culprits else 'a --config override'}: the config has no "
               f"field {field!r}; the fields and their meaning are in configs/default.py")
  except (ValueError, TypeError, OSError) as e:
    message = " ".join(str(e).split())
  if "--debug" in argv:
    raise
  print(f"error: {message}\nPass --helpshort for the flags.", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def load_config_flag(name: str = "config"):
  """The config of a config_file flag. ml_collections loads the file when the value is first
  read and raises then; a missing or broken file becomes a UserError naming the flag."""
  try:
    config = flags.FLAGS[name].value
    config.to_dict()  # a file that failed to load is a placeholder that raises on any access
    return config
  except (OSError, ImportError, SyntaxError, ValueError, AttributeError) as e:
    last = [line for line in str(e).splitlines() if line.strip()]
    raise errors.UserError(f"--{name}: {' / '.join(l.strip() for l in last[-2:])}") from e


def define_common_flags(workdir: bool = True) -> None:
  """The flags every entry point shares, defined once: --debug and --workdir."""
  if "debug" not in flags.FLAGS:
    flags.DEFINE_bool("debug", False, "Show tracebacks for user errors.")
  if workdir and "workdir" not in flags.FLAGS:
    flags.DEFINE_string("workdir", None, "Training directory (checkpoints, metrics, samples).")


def define_chain_flags() -> None:
  """The test-time chain's shape, for the commands that sample (sample, evaluate)."""
  flags.DEFINE_integer("block_steps", None, "Langevin steps between augmentation transitions "
                       "(default: config.sample.block_steps).")
  flags.DEFINE_integer("final_steps", None, "Plain Langevin steps at the end of the chain "
                       "(default: config.sample.final_steps).")
  flags.DEFINE_float("step_size", None, "Langevin step size λ of the chain (default: "
                     "config.sample.step_size, else the training one).")
  flags.DEFINE_integer("batch", None, "Chains run at a time (default: config.sample."
                       "batch_size).", lower_bound=1)


def apply_chain_flags(run):
  """The run (restore.Run) with --block_steps / --final_steps / --step_size in its
  settings.sample (a new value: the run and its saved config are left as they were); checked,
  a UserError names the flag."""
  changes = {}
  for name, least in (("block_steps", 1), ("final_steps", 0), ("step_size", 0)):
    value = flags.FLAGS[name].value
    if value is not None and (value < least or (name == "step_size" and not value > 0)):
      raise errors.UserError(f"--{name}={value} must be "
                             + ("positive" if name == "step_size" else f"at least {least}"))
    if value is not None:
      changes[name] = float(value) if name == "step_size" else int(value)
  return run.with_sample(**changes)


def define_evaluate_flags() -> None:
  """The flags of `evaluate classifier` and `evaluate likelihood` (the library modules behind
  them, eval/features.py and eval/likelihood.py, define none)."""
  from ebm_jax.eval import features, likelihood  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("data", None, f"classifier: dataset ({', '.join(features.DATASETS)}).")
  flags.DEFINE_string("data_path", "", "classifier: folder of the dataset's files (as "
                      "data.path; default: the dataset's usual place).")
  flags.DEFINE_integer("image_size", 0, "classifier: image size (default: the dataset's).")
  flags.DEFINE_integer("channels", 0, "classifier: channels (default: the dataset's).")
  flags.DEFINE_string("attribute", "", "classifier: label attribute (shapes: shape, color, "
                      "size, position).")
  flags.DEFINE_integer("classifier_steps", 1500, "classifier: optimisation steps.")
  flags.DEFINE_integer("chains", 512, "likelihood: AIS chains.")
  flags.DEFINE_integer("temperatures", 2000, "likelihood: AIS temperatures (one step each).")
  flags.DEFINE_enum("sampler", "hmc", list(likelihood.SAMPLERS), "likelihood: AIS transitions.")
  flags.DEFINE_float("ais_step_size", None, "likelihood: HMC leapfrog / MALA step size "
                     "(default: 0.1 for 2-D data, 0.005 for images).")
  flags.DEFINE_integer("leapfrog_steps", 5, "likelihood: leapfrog steps per HMC transition.")
  flags.DEFINE_float("temperature", 1.0, "likelihood: T of the density exp(-E/T).")


def make_dirs(path: str, flag: str) -> None:
  """files.make_dirs for a path given by a flag: the UserError names the flag."""
  try:
    files.make_dirs(path)
  except errors.UserError as e:
    raise errors.UserError(f"{flag}={e}") from e


def write_text(path: str, text: str, flag: str = "--out") -> None:
  """files.write_text for a path given by a flag: the UserError names the flag."""
  try:
    files.write_text(path, text)
  except errors.UserError as e:
    raise errors.UserError(f"{flag}={e}") from e


def no_positional(argv: list[str]) -> None:
  """Entry points take flags only: a stray word is a UserError naming it (one line, exit 2)."""
  if len(argv) > 1:
    raise errors.UserError(f"unexpected argument(s) {' '.join(argv[1:])!r}: every option is a "
                           "--flag=value (pass --helpshort for the flags)")


def enable_compilation_cache() -> str | None:
  """Switches on JAX's persistent compilation cache, so a second start of the same program
  (a resumed run, another `sample` of the same workdir) loads its compiled programs instead of
  compiling them again. The folder is $JAX_COMPILATION_CACHE_DIR where set, else
  `files.cache_dir()/xla`; EBM_JAX_COMPILATION_CACHE=0 turns it off. Returns the folder (or None)."""
  import jax  # pylint: disable=import-outside-toplevel
  if os.environ.get("EBM_JAX_COMPILATION_CACHE", "1").lower() in ("0", "false", "no", "off"):
    return None
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(files.cache_dir(), "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


# XLA:CPU flags measured faster for this project's nets (benchmarks/README.md, "XLA flags"):
# oneDNN convolutions as custom calls, without the XNNPACK / YNN fusions and the new fusion
# emitter. Set by the entry points only when XLA_FLAGS is unset; EBM_JAX_XLA_FLAGS=0 turns
# them off, and they are left out where a GPU or TPU plugin is installed.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_onednn_custom_call=true --xla_cpu_use_onednn=false "
                 "--xla_cpu_experimental_ynn_fusion_type=invalid --xla_cpu_use_xnnpack=false "
                 "--xla_backend_extra_options=xla_cpu_disable_new_fusion_emitter")
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def apply_xla_flags() -> str | None:
  """Sets XLA_FLAGS to CPU_XLA_FLAGS unless the user set XLA_FLAGS (then theirs stand, alone),
  EBM_JAX_XLA_FLAGS is 0, or an accelerator plugin is installed. Every entry point calls it
  before its first import of anything that imports jax: XLA reads XLA_FLAGS when the backend
  starts, but TF_CPP_MIN_LOG_LEVEL (set here with the flags) when jax's library loads. Called
  again (run_guarded) it changes nothing. Returns the flags set, or None."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  if "XLA_FLAGS" in os.environ:
    return None
  if os.environ.get("EBM_JAX_XLA_FLAGS", "1").lower() in ("0", "false", "no", "off"):
    return None
  if any(importlib.util.find_spec(p) is not None for p in _ACCELERATOR_PLUGINS):
    return None
  os.environ["XLA_FLAGS"] = CPU_XLA_FLAGS
  # Under this set XLA logs "library_matcher.h:58] Unsupported fusion type: 0" at ERROR level a
  # few times per compilation (harmless: the YNN fusion is off on purpose); C++ logs below
  # FATAL are silenced with it unless the user chose a level.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return CPU_XLA_FLAGS


def run_guarded(fn: Callable[[], None], compilation_cache: bool = True) -> None:
  """Runs fn; user-facing errors become a message on stderr and an exit code. Every entry
  point comes through here, and so sets the CPU XLA flags (apply_xla_flags) and turns on the
  persistent compilation cache (benchmarks, which time compilation, pass
  compilation_cache=False)."""
  apply_xla_flags()
  quiet_library_logs()
  if compilation_cache:
    enable_compilation_cache()
  debug = flags.FLAGS["debug"].value if "debug" in flags.FLAGS else False
  try:
    fn()
  except errors.UserError as e:  # DataError included
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except errors.DivergenceError as e:
    if debug:
      raise
    print(f"training stopped: {e}", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)
