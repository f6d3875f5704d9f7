"""Throw-away result backends for tests: carbon-cache and InfluxDB 1.x on 127.0.0.1.

The servers themselves are ``perf.backends`` (the writer benchmark starts them too); this
module adds the skip rule and the fixtures. ``tests/backends_postgresql.py`` is the
PostgreSQL counterpart.

Without the binaries the fixtures skip, unless ``ROUTER_REQUIRE_BACKENDS`` is set (CI), where
a missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from perf.backends import CarbonServer, InfluxServer, free_port

__all__ = ["CarbonServer", "InfluxServer", "require_binary", "carbon_server",
           "influx_server", "free_port", "require_carbon", "require_influxd"]


def require_binary(name: str, package: str) -> str:
    """The binary's path; skip without it, fail under ROUTER_REQUIRE_BACKENDS."""
    found = shutil.which(name)
    if found is None:
        problem = f"{name} not found (install Debian's {package})"
        if os.environ.get("ROUTER_REQUIRE_BACKENDS"):
            pytest.fail(f"ROUTER_REQUIRE_BACKENDS is set but {problem}", pytrace=False)
        pytest.skip(problem)
    return found


def require_carbon() -> None:
    require_binary("carbon-cache", "graphite-carbon")
    require_binary("whisper-fetch", "python3-whisper")


def require_influxd() -> None:
    require_binary("influxd", "influxdb")


@pytest.fixture
def carbon_server(tmp_path: Path) -> Iterator[CarbonServer]:
    require_carbon()
    server = CarbonServer(tmp_path / "carbon")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_server(tmp_path: Path) -> Iterator[InfluxServer]:
    require_influxd()
    server = InfluxServer(tmp_path / "influx")
    server.start()
    try:
        yield server
    finally:
        server.stop()
