"""The package's shape: no import cycles, no self-import, version from the metadata."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib

import jaxflow as jf

ROOT = pathlib.Path(jf.__file__).resolve().parent


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ["jaxflow", *path.relative_to(ROOT).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (top-level and inside functions alike)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            own_packages = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
            for target in targets:
                while target and target not in mods:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if not target or target == name:
                    continue
                edges[name].add(target)
                # Importing `a.b.c` runs the `__init__` of every package on the way (`a.b`),
                # unless the importer is inside it (then that package is already loading).
                parts = target.split(".")
                for i in range(1, len(parts)):
                    package = ".".join(parts[:i])
                    if package in mods and package not in own_packages and package != name:
                        edges[name].add(package)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    assert _cycles(_import_graph()) == []


def test_package_never_imports_itself_by_name():
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "jaxflow" for a in node.names):
                offenders.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "jaxflow":
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_version_comes_from_the_package_metadata():
    assert jf.__version__ == importlib.metadata.version("jaxflow")


def test_public_names_are_reexported_as_themselves():
    for name in ("FlowOptions", "AbstractStepper", "AbstractSampler", "classify_arrays",
                 "JaxflowError", "flow", "descend", "scan", "load", "Report"):
        assert hasattr(jf, name), name
