"""The type checker, as a test: ``mypy`` with the configuration in pyproject.toml.

``router`` is checked strictly, ``checkers`` and ``replaylog`` with the defaults plus
``check_untyped_defs``; every ``type: ignore`` must name its error code and still be needed.
Running it here keeps the README's one test command the whole of CI.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

#: Slow tier: deselect with -m 'not slow' (the fast tier is -m 'not slow and not interop').
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[test]')")
def test_mypy_is_clean(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
