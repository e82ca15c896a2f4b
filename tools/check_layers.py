"""Checks the package's layers: no import circle under vision_jax/, and what train/ may import.

  python tools/check_layers.py [--lazy]

Reads every vision_jax/**/*.py with `ast` (nothing is imported or run) and builds
the graph of which module imports which: `import vision_jax.x`, `from
vision_jax.x import y` (y a module or a name in x), relative imports, at module
level and, with --lazy, inside functions too. Prints each import circle (a
strongly connected set of modules) and each import of a module outside
`ALLOWED_FROM_TRAIN` by a module of vision_jax/train/. Exit status 0 when there
is neither, 1 otherwise. docs/architecture.md draws the layers this checks.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "vision_jax"
# What vision_jax/train/ may import besides itself (docs/architecture.md).
ALLOWED_FROM_TRAIN = ("vision_jax.models", "vision_jax.data", "vision_jax.weights",
                      "vision_jax.config_base", "vision_jax.config_check",
                      "vision_jax.config_fields", "vision_jax.config_util", "vision_jax.console",
                      "vision_jax.environment")


def module_files(root: str = ROOT) -> dict[str, str]:
  """{dotted module name: file path} of every module under vision_jax/."""
  out = {}
  for directory, _, files in os.walk(os.path.join(root, PACKAGE)):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      parts = os.path.relpath(path, root)[:-3].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The longest known module that `name` is or lies in (a.b.c -> a.b when c is a name)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def imports_of(module: str, path: str, modules: dict[str, str], lazy: bool) -> set[str]:
  """The vision_jax modules that `module` imports (at module level; everywhere with `lazy`)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith("__init__.py")
  nodes = ast.walk(tree) if lazy else _module_level(tree.body)
  found = set()
  for node in nodes:
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    for name in names:
      if name.split(".")[0] != PACKAGE:
        continue
      target = _resolve(name, modules)
      if target and target != module and not module.startswith(target + "."):
        found.add(target)  # a package's own __init__ is not an edge to itself
  return found


def _module_level(body):
  """Import nodes run when the module is imported: top level, inside if/try blocks."""
  for node in body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, (ast.If, ast.Try)):
      for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", []),
                    *[h.body for h in getattr(node, "handlers", [])]):
        yield from _module_level(block)


def graph(lazy: bool = False, root: str = ROOT) -> dict[str, set[str]]:
  modules = module_files(root)
  return {m: imports_of(m, p, modules, lazy) for m, p in sorted(modules.items())}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected sets of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  sys.setrecursionlimit(10_000)
  for v in sorted(edges):
    if v not in index:
      visit(v)
  return sorted(out)


def train_violations(edges: dict[str, set[str]]) -> list[str]:
  """'train.x -> y' for each import by train/ of a module outside ALLOWED_FROM_TRAIN."""
  out = []
  for module, targets in sorted(edges.items()):
    if not (module == f"{PACKAGE}.train" or module.startswith(f"{PACKAGE}.train.")):
      continue
    for target in sorted(targets):
      inside = target == f"{PACKAGE}.train" or target.startswith(f"{PACKAGE}.train.")
      allowed = any(target == a or target.startswith(a + ".") for a in ALLOWED_FROM_TRAIN)
      if not (inside or allowed):
        out.append(f"{module} -> {target}")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lazy", action="store_true",
                      help="count the imports inside functions too")
  args = parser.parse_args(argv)
  edges = graph(lazy=args.lazy)
  found = circles(edges)
  bad = train_violations(edges)
  kind = "module-level and function-level" if args.lazy else "module-level"
  print(f"{len(edges)} modules, {sum(map(len, edges.values()))} {kind} imports between them")
  for component in found:
    print("circle:", " <-> ".join(component))
  for line in bad:
    print("train/ imports outside its layer:", line)
  if not found and not bad:
    print("no import circle; train/ imports only models, data, weights, the config modules, "
          "console and environment")
  return 1 if found or bad else 0


if __name__ == "__main__":
  sys.exit(main())
