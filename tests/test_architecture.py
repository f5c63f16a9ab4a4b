"""The house rules, read from the source: who may import whom, no import cycles, file sizes, the package list.

Imports are parsed (ast), module-level and inside functions alike, from every library module (the folders
that install as ``priorkit.distill``, ``priorkit.gen3d``, ``priorkit.inverse``, ``priorkit.apps``).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> repository folder
MAX_LINES = 450
REASON = "Over 450 lines because"

#: top-level part -> the parts it may import (besides itself)
ALLOWED = {"apps": {"gen3d", "inverse", "distill"}, "gen3d": {"distill"}, "inverse": {"distill"}, "distill": set()}
#: distill's core imports none of these
ABOVE_CORE = ("priorkit.distill.students", "priorkit.distill.score", "priorkit.distill.zoo")


def _library_files() -> dict[str, Path]:
    """module name -> file, for every .py file of the installed packages."""
    out: dict[str, Path] = {}
    for name, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [name, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _library_files()
PACKAGES = {m for m, p in MODULES.items() if p.name == "__init__.py"}


def _resolve(name: str) -> str | None:
    """The library module an absolute import name refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported name, line) for every import in ``module``: absolute names, relative ones resolved, and
    ``from package import submodule`` as the submodule."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if module in PACKAGES else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for a in node.names:
                full = f"{stem}.{a.name}"
                found.append((full if full in MODULES else stem, node.lineno))
    return found


IMPORTS = {m: _imports(m) for m in MODULES}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_the_library_is_found():
    assert {"priorkit.distill.core.denoiser", "priorkit.gen3d", "priorkit.inverse", "priorkit.apps.cli"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layering(module):
    """apps -> gen3d, inverse, distill; gen3d -> distill; inverse -> distill; distill -> nothing above it;
    distill.core -> nothing from students, score, zoo; nobody -> benchmarks."""
    bad = []
    for name, line in IMPORTS[module]:
        if name == "benchmarks" or name.startswith("benchmarks."):
            bad.append(f"line {line}: {name} (the library never imports benchmarks)")
            continue
        target = _resolve(name) if name.startswith("priorkit") else None
        if target is None or target == "priorkit":
            continue
        src, dst = _part(module), _part(target)
        if src and dst and dst != src and dst not in ALLOWED.get(src, set()):
            bad.append(f"line {line}: {target} ({src} may not import {dst})")
        if module.startswith("priorkit.distill.core") and target.startswith(ABOVE_CORE):
            bad.append(f"line {line}: {target} (distill.core imports nothing from students, score, zoo)")
    assert not bad, f"{module}:\n" + "\n".join(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), in the graph of library imports."""
    graph = {m: sorted({t for n, _ in IMPORTS[m] if (t := _resolve(n)) and t != m and t != "priorkit"})
             for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles():
    """No circle of imports between library modules, counting imports inside functions."""
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_file_size(module):
    """No library file over 450 lines unless its docstring's first lines say why ("Over 450 lines because ...")."""
    path = MODULES[module]
    text = path.read_text()
    lines = text.count("\n") + (not text.endswith("\n") and bool(text))
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert REASON in "\n".join(doc.splitlines()[:5]), (
        f"{path.relative_to(ROOT)} has {lines} lines; split it by concept or state '{REASON} ...' at its top")


def test_package_list_matches_the_folders():
    """pyproject's explicit [tool.setuptools] packages equal the package folders on disk."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == PACKAGES
