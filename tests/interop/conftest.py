"""Fixtures for the interoperability tests against real Icinga 2 daemons.

Every test in tests/interop/ is marked ``interop``; deselect them with ``-m "not interop"``.
Without an icinga2 binary they are skipped, unless ROUTER_REQUIRE_INTEROP=1 (CI), where a
missing binary is a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from perf.icinga import IcingaFactory, find_icinga2

_HERE = Path(__file__).resolve().parent
_REPORT_SECTION = "icinga node logs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    # Standard recipe: keep each phase's report on the item (rep_setup, rep_call,
    # rep_teardown) so that fixture finalizers can see whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def icinga2_bin() -> str:
    """Path of a working icinga2 binary (skip, or fail under ROUTER_REQUIRE_INTEROP=1)."""
    required = os.environ.get("ROUTER_REQUIRE_INTEROP") == "1"
    binary = find_icinga2()
    problem = None
    if binary is None:
        problem = (
            "icinga2 binary not found (install Debian's icinga2-bin, or set ICINGA2_BIN)"
        )
    else:
        try:
            subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"{binary} --version failed: {exc}"
    if problem:
        if required:
            pytest.fail(f"ROUTER_REQUIRE_INTEROP=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    return binary


@pytest.fixture
def icinga_factory(
    request: pytest.FixtureRequest, tmp_path: Path, icinga2_bin: str
) -> Iterator[IcingaFactory]:
    """``icinga_factory(name, zone, **IcingaNode kwargs) -> IcingaNode`` (not started).

    Nodes live in ``tmp_path/icinga/<name>/``, share one test CA (``factory.ca_crt``,
    ``factory.issue(name)`` for more certificates) and are all stopped at teardown. When
    the test failed, the tail of every node's log is attached to the failure report.
    """
    factory = IcingaFactory(tmp_path / "icinga", binary=icinga2_bin)
    try:
        yield factory
    finally:
        factory.stop_all()
        _attach_logs_on_failure(request, factory)


def _attach_logs_on_failure(request: pytest.FixtureRequest, factory: IcingaFactory) -> None:
    report = getattr(request.node, "rep_call", None) or getattr(request.node, "rep_setup", None)
    if report is None or not report.failed or not factory.nodes:
        return
    # The failure report already exists but is printed only in the final summary, so a
    # section added now shows up right under the traceback.
    report.sections.append((_REPORT_SECTION, factory.diagnostics(60)))
