"""Shared fixtures: every loop-touching test runs under both asyncio and uvloop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest
import uvloop

LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def run(request):
    """``run(coro, timeout)``: run a coroutine to completion in a fresh loop of each kind."""
    factory = LOOP_FACTORIES[request.param]

    def runner(coro, timeout: float = 60.0):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, timeout))

    return runner


@pytest.fixture(autouse=True)
def _router_logs(caplog):
    caplog.set_level(logging.INFO, logger="router")
    yield


#: Small plugin scripts for the checker tests.
PLUGIN_DATA = Path(__file__).parent / "data" / "plugins"


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A private, executable copy of tests/data/plugins (tests may modify it)."""
    target = tmp_path / "plugins"
    target.mkdir()
    for source in PLUGIN_DATA.iterdir():
        shutil.copy(source, target / source.name)
        os.chmod(target / source.name, 0o755)
    return target
