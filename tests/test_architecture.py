"""The architecture of ``src/clipguard`` as stated in docs/architecture.md, enforced.

Reads every module's imports with ``ast`` -- module level, function level and ``TYPE_CHECKING``
blocks alike -- and fails on:

* an import that runs against the layering rule (a package importing a sibling of its own layer or
  a layer above it),
* an import cycle between modules (importing ``clipguard.x.y`` also imports the package
  ``clipguard.x``: both edges count),
* a ``clipguard`` import placed inside a function (the way cycles get hidden); a module that
  imports ``importlib`` and names clipguard modules in strings (the CLI's lazy command table)
  has those modules counted as its imports,
* a function longer than ``MAX_FUNCTION_LINES`` lines of code (docstring excluded),
* a package ``__init__`` without ``__all__``.

Run ``python tests/test_architecture.py`` to print the layer table, the import graph's size and the
lines per package.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "clipguard"

#: The layering rule (docs/architecture.md): a module may import its own package and any package of
#: a strictly lower layer. ``""`` is the top-level ``clipguard/__init__.py``.
LAYERS: dict[str, int] = {
    "errors": 0,
    "utils": 1, "registry": 1, "": 1,
    "data": 2, "models": 2, "io": 2,
    "attacks": 3, "train": 3, "embed": 3,
    "detect": 4,
    "defend": 5, "analyze": 5, "evaluate": 5, "report": 5, "distributed": 5,
    "pipeline": 6,
    "cli": 7,
    "__main__": 8,
}

#: Inside ``detect/``: the same rule between its sub-packages / modules.
DETECT_LAYERS: dict[str, int] = {
    "options": 0,
    "neighbours": 1,
    "reference": 2,
    "detectors": 3,
    "config": 4,
    "metrics": 4, "share": 4,
    "engine": 5,
    "results": 6, "sharded": 6,
    "report": 7, "store": 7,
    "facade": 8,
    "api": 9,
    "": 10,  # detect/__init__.py re-exports the public surface
}

MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def iter_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


def _resolve_from(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str, path: Path, modules: dict[str, Path]):
    """``[(target_module, lineno, in_function)]`` of every clipguard import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        out.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve_from(mod, is_pkg, child)
                if target == ROOT or target.startswith(ROOT + "."):
                    for alias in child.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{target}.{alias.name}"
                        out.append((sub if sub in modules else target, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    if any(t == "importlib" for t, *_ in _plain_imports(tree)):
        # a module loaded by name (the CLI's command table) is an import like any other
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value
                    and node.value in modules):
                out.append((node.value, node.lineno, False))
    return out


def _plain_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def parents(name: str) -> list[str]:
    """``clipguard.a.b.c`` -> ``[clipguard.a, clipguard.a.b]`` (packages imported on the way)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def build_graph():
    modules = iter_modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    records = []
    for mod, path in modules.items():
        for target, line, in_function in imports_of(mod, path, modules):
            records.append((mod, target, line, in_function))
            for t in parents(target) + [target]:
                if t in modules and t != mod and not mod.startswith(t + "."):
                    edges[mod].add(t)
    return modules, edges, records


def top_package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def detect_part(name: str) -> str:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 else ""


def layering_violations(records) -> list[str]:
    bad = []
    for mod, target, line, _ in records:
        src, dst = top_package(mod), top_package(target)
        if dst == "":  # `import clipguard` (the root package) is layer 1: allowed above it
            if LAYERS.get(src, 99) <= LAYERS[""] and src != "":
                bad.append(f"{mod}:{line} imports the clipguard root package from layer {LAYERS.get(src)}")
            continue
        if src not in LAYERS or dst not in LAYERS:
            bad.append(f"{mod}:{line} -> {target}: package {src if src not in LAYERS else dst!r} has no "
                       "layer in tests/test_architecture.py LAYERS (add it, and to docs/architecture.md)")
            continue
        if src == dst:
            if src == "detect":
                a, b = detect_part(mod), detect_part(target)
                if a != b and not (DETECT_LAYERS.get(b, 99) < DETECT_LAYERS.get(a, -1)):
                    bad.append(f"{mod}:{line} -> {target}: detect/{b or '__init__'} is not below "
                               f"detect/{a or '__init__'}")
            continue
        if not LAYERS[dst] < LAYERS[src]:
            bad.append(f"{mod}:{line} -> {target}: {dst!r} (layer {LAYERS[dst]}) is not below "
                       f"{src or 'clipguard'!r} (layer {LAYERS[src]})")
    return bad


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def long_functions(modules: dict[str, Path]) -> list[str]:
    bad = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                doc_lines = body[0].end_lineno - body[0].lineno + 1
            else:
                doc_lines = 0
            n = node.end_lineno - node.lineno + 1 - doc_lines
            if n > MAX_FUNCTION_LINES:
                bad.append(f"{mod}.{node.name} (line {node.lineno}): {n} lines")
    return bad


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_every_package_has_a_layer(graph):
    modules, _, _ = graph
    missing = sorted({top_package(m) for m in modules} - set(LAYERS))
    assert not missing, f"packages without a layer in LAYERS / docs/architecture.md: {missing}"


def test_no_import_runs_against_the_layers(graph):
    _, _, records = graph
    bad = layering_violations(records)
    assert not bad, "imports against the layering rule:\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    _, edges, _ = graph
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_clipguard_import_inside_a_function(graph):
    _, _, records = graph
    bad = [f"{mod}:{line} imports {target}" for mod, target, line, in_f in records if in_f]
    assert not bad, "clipguard imports inside functions (move them to module level):\n" + "\n".join(bad)


def test_no_function_is_longer_than_the_limit(graph):
    modules, _, _ = graph
    bad = long_functions(modules)
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines of code:\n" + "\n".join(bad)


def test_every_package_declares_its_public_surface(graph):
    modules, _, _ = graph
    bad = []
    for mod, path in modules.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(t, ast.Name)}
        if "__all__" not in names:
            bad.append(mod)
    assert not bad, f"packages without __all__: {bad}"


# -- the checks can fail: they are tested on hand-made graphs ---------------------------------------

def test_the_checks_catch_what_they_are_meant_to_catch():
    recs = [("clipguard.detect.engine", "clipguard.embed", 3, False),        # upward? no: embed is below
            ("clipguard.detect.engine", "clipguard.evaluate.api", 4, False),  # upward
            ("clipguard.train.api", "clipguard.attacks.adaptive", 5, True),   # same layer, sibling
            ("clipguard.detect.detectors.base", "clipguard.detect.engine", 6, False)]  # upward in detect
    bad = layering_violations(recs)
    assert len(bad) == 3 and "evaluate" in bad[0] and "attacks" in bad[1] and "engine" in bad[2]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def lines_per_package() -> dict[str, int]:
    out: dict[str, int] = {}
    for mod, path in iter_modules().items():
        key = top_package(mod) or "clipguard/__init__"
        if path.parent == SRC / ROOT and path.name != "__init__.py":
            key = path.name
        out[key] = out.get(key, 0) + len(path.read_text().splitlines())
    return dict(sorted(out.items()))


if __name__ == "__main__":
    modules, edges, records = build_graph()
    print(f"{len(modules)} modules, {sum(map(len, edges.values()))} import edges, "
          f"{len(find_cycles(edges))} cycles, {len(layering_violations(records))} layering violations, "
          f"{sum(1 for r in records if r[3])} function-level clipguard imports, "
          f"{len(long_functions(modules))} functions over {MAX_FUNCTION_LINES} lines")
    for k, v in lines_per_package().items():
        print(f"{k:24s} {v:6d}")
    print(f"{'total':24s} {sum(lines_per_package().values()):6d}")
    sys.exit(0)
