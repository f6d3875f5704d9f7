"""docs/operations.md: "Keys that a running process cannot change (...) are listed under
`restart_required`; the rest is applied." docs/configuration.md ("Reload"): the reload
"applies the rest and lists these under `restart_required`"; `limits.status_max_clients`
and `timeouts.status_header` are not in that list, yet both are only "Read at start"
(router/app.py:139-140 hands them to StatusServer once; no reload path updates them).

So a reload that changes them answers `result: ok`, `restart_required: []`, and the
status listener goes on with the old values: the operator is told it was applied.
Either the reload must apply them or list them under `restart_required`.
"""

from __future__ import annotations

import asyncio
import socket
import time

from tests.conftest import run  # noqa: F401  (the fixture)
from tests.nodeutil import ClusterSpec
from tests.pkiutil import make_test_pki


def _idle_close_after(port: int, limit: float) -> float:
    """Seconds until the status listener closes a connection that sends nothing."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        try:
            while sock.recv(1024):
                pass
        except (TimeoutError, socket.timeout):
            return float("inf")
        except ConnectionError:
            pass
    return time.monotonic() - started


def test_reload_of_status_listener_limits_is_applied_or_listed(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])

    async def scenario():
        service = await spec.start("master", extra="")
        try:
            path = tmp_path / "master.toml"
            text = path.read_text().replace(
                "[node]", "[timeouts]\nstatus_header = 1\n"
                          "[limits]\nstatus_max_clients = 8\n[node]", 1)
            path.write_text(text)
            record = await service.reload("api")
            assert record.result == "ok", record
            assert "status_header" in record.changes.get("timeouts", []), record.changes
            assert "status_max_clients" in record.changes.get("limits", []), record.changes
            closed_after = await asyncio.to_thread(_idle_close_after,
                                                   service.status_port, 6.0)
            return record, closed_after, service.status.max_clients
        finally:
            await service.stop()

    record, closed_after, max_clients = run(scenario())
    listed = set(record.restart_required)
    assert closed_after < 4.0 or "timeouts.status_header" in listed, (
        f"reload set timeouts.status_header 10 -> 1 s, answered ok with restart_required="
        f"{record.restart_required}, but an idle status client was still kept "
        f"{'more than 6' if closed_after == float('inf') else f'{closed_after:.1f}'} s (the start-time value is 10 s): not applied and not listed")
    assert max_clients == 8 or "limits.status_max_clients" in listed, (
        f"reload set limits.status_max_clients 64 -> 8, answered ok with restart_required="
        f"{record.restart_required}, but the status listener still caps at {max_clients}")
