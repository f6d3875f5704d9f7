"""The structure rules of docs/architecture.md, checked on the source.

The layer contracts themselves live in pyproject.toml (``[tool.importlinter]``) and are
checked by ``lint-imports``; this module runs it too, so the fast test tier catches an
arrow that runs back up. What import-linter does not check is here, on the AST of every
module (imports inside functions and under ``TYPE_CHECKING`` count, like at run time they
might):

* no import cycle between any two modules of router/, checkers/ and replaylog/;
* no production module (router/, checkers/, replaylog/ and the modules ``router perf``
  runs) imports ``tests``;
* no module imports another module's underscore names;
* every sub-package of router/ states its public surface with ``__all__``;
* at most eight modules directly in router/, none anywhere over 800 lines.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "checkers", "replaylog")
#: perf modules that ``router perf`` may import: production code like the rest. The
#: ``bench_*.py`` scripts are standalone benchmarks run by hand, not part of the program.
PERF_RUNTIME = tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / "perf").glob("*.py")
                            if not p.name.startswith("bench_")))
MAX_LINES = 800
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


MODULES = {module_name(path): path for path in source_files()}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[:-(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> Iterator[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(importer, is_package, node)
            for alias in node.names:
                yield source, alias.name, node.lineno


def internal_edges(path: Path) -> set[str]:
    """The project modules ``path`` imports (a ``from pkg import mod`` counts as ``pkg.mod``)."""
    edges = set()
    for source, name, _ in imports_of(path):
        if name is not None and f"{source}.{name}" in MODULES:
            edges.add(f"{source}.{name}")
        elif source in MODULES:
            edges.add(source)
    edges.discard(module_name(path))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_strongly_connected_finds_a_cycle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = {name: internal_edges(path) for name, path in MODULES.items()}
    assert strongly_connected(graph) == []


def test_production_code_never_imports_tests() -> None:
    paths = source_files() + [ROOT / p for p in PERF_RUNTIME]
    offenders = [f"{path.relative_to(ROOT)}:{line}"
                 for path in paths for source, _, line in imports_of(path)
                 if source == "tests" or source.startswith("tests.")]
    assert offenders == []


def test_no_private_names_imported_across_modules() -> None:
    offenders = []
    for path in source_files():
        for source, name, line in imports_of(path):
            if name and name.startswith("_") and not name.startswith("__") \
                    and source.split(".")[0] in PACKAGES:
                offenders.append(f"{path.relative_to(ROOT)}:{line} {source}.{name}")
    assert offenders == []


def test_no_asyncio_wait_for_in_production_code() -> None:
    """On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives in the
    turn its awaitable completes (fixed in 3.12): a writer runner cancelled on reload
    or stop then looped on forever (CI hung in test_runner_skips_a_record_that_makes_
    the_backend_crash). ``async with asyncio.timeout(...)`` does not. The node's packages
    only: perf's load tools are cancelled once, when a run ends."""
    offenders = []
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for" \
                    and isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_router_subpackages_declare_their_public_surface() -> None:
    missing = []
    for init in sorted((ROOT / "router").glob("*/__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        names = {target.id for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)}
        if "__all__" not in names:
            missing.append(str(init.relative_to(ROOT)))
    assert missing == []


def test_few_modules_directly_in_router() -> None:
    top = sorted(p.name for p in (ROOT / "router").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("path", source_files() + sorted((ROOT / "perf").glob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_layer_contracts_hold() -> None:
    """``lint-imports`` with the contracts in pyproject.toml (the dependency rule)."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
