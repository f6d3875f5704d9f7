"""A command_endpoint check whose answer is read in the loop iteration in which its
timeout expires: LocalChecks._run_remote hands the answer on (accept_result -> _finish),
and then the already-armed asyncio.timeout cancels the task anyway, so _run reports an
extra UNKNOWN "did not answer" for the same run: two results, and the scheduler counts two
attempts for one check run."""
from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

import router.features.checks as checks_mod
from router.features.checks import LocalChecks
from router.features.scheduler import CheckSpec, Scheduler
from tests.nodeutil import check_result

TIMEOUT = 0.3


class FakeNode:
    name = "m1"

    def __init__(self) -> None:
        self.connected_names = {"agent1"}
        self.originated: list[dict[str, Any]] = []

    def originate(self, method: str, params: dict[str, Any]) -> bool:
        self.originated.append(params)
        return True

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool:
        return True


class FakeCatalog:
    def collect_macros(self, command, macros):
        return dict(macros)

    def get(self, command):
        return SimpleNamespace(timeout=TIMEOUT)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_answer_at_the_timeout_edge_gives_one_result(kind, monkeypatch):
    monkeypatch.setattr(checks_mod, "REMOTE_GRACE", 0.0)
    spec = CheckSpec("agent1", "disk", service="disk", command_endpoint="agent1",
                     interval=60, retry_interval=10, max_check_attempts=3)
    started = time.time() - 3600          # well past the 5-minute start window
    scheduler = Scheduler([spec], local_endpoint="m1", zone_endpoints=["m1"],
                          started=started)
    node = FakeNode()
    checks = LocalChecks(node, scheduler, pool=None, catalog=FakeCatalog())
    answer = check_result("agent1", "disk", "DISK CRITICAL", state=2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)

        def on_readable() -> None:
            # The node reads the agent's event::CheckResult (Node.on_message).
            rsock.recv(100)
            loop.remove_reader(rsock.fileno())
            assert checks.accept_result("agent1", answer)
            if kind == "uvloop":
                # uvloop runs timers before polling: the rest of this busy iteration
                # (other reads in the same batch) takes us past the deadline.
                time.sleep(TIMEOUT)

        start, _ = scheduler.due(time.time(), node.connected_names)
        assert [s.name for s, _ in start] == ["agent1!disk"]
        task = asyncio.ensure_future(checks._run(spec))
        await asyncio.sleep(TIMEOUT - 0.1)

        def busy() -> None:
            # The answer's bytes arrive; this loop iteration is still busy when the
            # timeout comes due, so the read and the timer land in the same iteration
            # (asyncio runs ready I/O callbacks before expired timers).
            wsock.send(b"x")
            if kind == "asyncio":
                time.sleep(0.2)

        loop.add_reader(rsock.fileno(), on_readable)
        loop.call_soon(busy)
        await asyncio.wait_for(task, 5)
        rsock.close()
        wsock.close()

    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    outputs = [p["cr"]["output"] for p in node.originated]
    attempt = scheduler.states["agent1!disk"].attempt
    assert outputs == ["DISK CRITICAL"], (
        f"one run of the check produced {len(outputs)} results {outputs!r}: the agent's "
        "answer was handed on and then the expired timeout added an UNKNOWN 'did not "
        f"answer' for the same run (soft attempt now {attempt}, should be 1)")
