"""The package's shape (issue: one layout step): no import cycle among ebm_jax modules, no
module over ~350 lines, thin command-line modules, and every "ref §x" mark pointing at a
heading of docs/reference.md. Read from the source with `ast`, nothing imported."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "ebm_jax")
CLIS = ("sample", "evaluate", "evaluate_flags", "evaluate_fid", "compose", "main",
        "experiments.ablation")


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every .py file in the package."""
  out = {}
  for folder, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(
            folder, f)
  return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
  """ebm_jax modules that `name` imports, at any depth of its code."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      for a in node.names:
        found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
  return {m for m in found if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph[n]):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    state[n] = 2
    stack.pop()
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_planted_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_ebm_jax_modules():
  modules = _modules()
  graph = {n: _imports(n, p, set(modules)) for n, p in modules.items()}
  assert graph["ebm_jax.train"] and "ebm_jax.step" in graph["ebm_jax.train"]  # the parser works
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_module_over_350_lines_and_thin_command_lines():
  modules = _modules()
  sizes = {n: sum(1 for _ in open(p, encoding="utf-8")) for n, p in modules.items()}
  assert not {n: s for n, s in sizes.items() if s > 350}
  thick = {c: sizes[f"ebm_jax.{c}"] for c in CLIS if sizes[f"ebm_jax.{c}"] > 130}
  assert not thick, f"command-line modules should be flags + run over library code: {thick}"


def test_every_ref_mark_has_a_heading_in_docs_reference():
  with open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8") as f:
    headings = set(re.findall(r"^#+\s*§?(\d+(?:\.\d+)*)\b", f.read(), re.M))
  marks = set()
  for folder in ("ebm_jax", "configs", "benchmarks", "tests", "docs"):
    for base, _, files in os.walk(os.path.join(ROOT, folder)):
      for f in files:
        if f.endswith((".py", ".md")) and f != "reference.md":
          text = open(os.path.join(base, f), encoding="utf-8").read()
          for m in re.finditer(r"ref(?:erence)? §(\d+(?:\.\d+)*)", text):
            marks.add((m.group(1), f))
  assert marks, "the pattern finds the marks"
  missing = sorted((s, f) for s, f in marks if s not in headings)
  assert not missing, missing


# The set-up layer: the modules that may hold the ConfigDict (load it, validate it, save it with
# a checkpoint, build per-row configs) and turn it into ebm_jax.settings for everything below.
SET_UP = {"ebm_jax.train", "ebm_jax.config_lib", "ebm_jax.checkpoint", "ebm_jax.restore",
          "ebm_jax.api", "ebm_jax.experiments.ablation_lib", "ebm_jax.experiments.toy2d_lib"}
COMMAND = {f"ebm_jax.{c}" for c in CLIS} | {"ebm_jax.cli", "ebm_jax.experiments.toy2d"}


def _external_imports(path: str) -> set[str]:
  """Top-level names of what a module imports (absl.flags as 'absl.flags')."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
  return found


def test_the_config_dict_stops_at_set_up_and_flags_live_in_command_modules():
  modules = _modules()
  below = {n: p for n, p in modules.items()
           if n not in SET_UP | COMMAND and not n.startswith("ebm_jax.configs")}
  assert "ebm_jax.step" in below and "ebm_jax.train" not in below  # the split works
  holding = sorted(n for n, p in below.items() if "ml_collections" in _external_imports(p))
  assert not holding, f"modules below set-up that import ml_collections: {holding}"
  flags = sorted(n for n, p in modules.items()
                 if n not in COMMAND and "absl.flags" in _external_imports(p))
  assert not flags, f"library modules that define absl flags: {flags}"
  graph = {n: _imports(n, p, set(modules)) for n, p in modules.items()}
  uses_cli = sorted(n for n, deps in graph.items() if "ebm_jax.cli" in deps and n not in COMMAND)
  assert not uses_cli, f"library modules that import the command-line module: {uses_cli}"
