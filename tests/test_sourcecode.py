"""Source-level rules that keep the protocol core sans-I/O.

``router/protocol`` must stay testable with bytes and an injected clock, and usable from
any event loop: it may not import the I/O or concurrency machinery. The check parses the
modules with ``ast`` so that comments, strings and docstrings mentioning those modules do
not count, while every form of import does (``import x``, ``import x.y``, ``from x import
y``, imports nested in functions, ``__import__("x")`` and ``importlib.import_module("x")``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import router.protocol

FORBIDDEN = frozenset({"asyncio", "ssl", "socket", "selectors", "threading"})
PROTOCOL_DIR = Path(router.protocol.__file__).resolve().parent
MODULES = sorted(PROTOCOL_DIR.rglob("*.py"))


def imported_modules(tree: ast.AST) -> Iterator[str]:
    """Every absolute module name that ``tree`` imports, statically or by name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                yield argument.value


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def test_the_protocol_package_has_the_expected_modules() -> None:
    names = {path.name for path in MODULES}
    assert {"netstring.py", "jsonrpc.py", "events.py", "peer.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_protocol_modules_do_not_import_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = sorted({name for name in imported_modules(tree)
                  if name.split(".")[0] in FORBIDDEN})
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize("source", [
    "import asyncio", "import ssl as s", "import os, socket", "from selectors import X",
    "from threading import Lock", "import asyncio.events",
    "def f():\n    import ssl", "__import__('socket')",
    "import importlib\nimportlib.import_module('asyncio')",
])
def test_the_checker_sees_every_import_form(source: str) -> None:
    names = {name.split(".")[0] for name in imported_modules(ast.parse(source))}
    assert names & FORBIDDEN


def test_the_checker_ignores_mentions_in_strings_and_comments() -> None:
    source = '"""uses no asyncio"""\n# import ssl\nx = "socket"\nfrom router import errors\n'
    assert not {n.split(".")[0] for n in imported_modules(ast.parse(source))} & FORBIDDEN
