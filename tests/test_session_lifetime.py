"""A dropped session must be freed: nothing the node keeps may hold its Connection.

Each Connection holds its TLS object, buffers, send queue and ledger (~40 KB). Anything
that keeps a reference after the drop (a cache keyed by connection, a pending wait) turns
reconnect churn into unbounded memory growth: the soak's RSS rose with every churned
agent (issue 21, users.md P20) until these were found. This test drives the paths that
keep per-connection state (the console's sampler and document, /metrics, a result
routed upstream, a command routed down) and then requires the dropped Connection to be
garbage.
"""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from tests.nodeutil import (ClusterSpec, FakePeer, check_result, metrics_text, status_json,
                            wait_until)
from tests.pkiutil import make_test_pki

FAST = "reconnect_min = 0.1\nreconnect_max = 0.3\nconnect = 3.0"
CHAIN = [("master", ["master"], None), ("sat", ["sat1"], "master"),
         ("agent1", ["agent1"], "sat")]


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])


def test_a_dropped_session_is_garbage_after_console_metrics_and_traffic(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, CHAIN, timeouts=FAST)

    async def main():
        sat = await spec.start("sat1")
        try:
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: {"agent1", "master"} <= set(sat.node.connected_names),
                             what="sessions")
            agent.send("event::CheckResult", check_result("agent1", "disk", "r0"))
            master.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "check_command", "host": "agent1",
                "service": "disk", "macros": {}, "endpoint": "agent1"}, ts=time.time())
            await wait_until(lambda: agent.messages("event::ExecuteCommand"),
                             what="the command at the agent")
            await wait_until(lambda: master.messages("event::CheckResult"),
                             what="the result at the master")
            session_type = type(sat.node.connections["agent1"])
            # What an operator's tools touch while the agent is connected: a console
            # sample (it parses the peer's certificate ahead), the console document
            # and /metrics (certificate expiry per peer).
            assert sat.console is not None
            sat.console.sample()
            await status_json(sat, "/v1/console")
            await metrics_text(sat)
            await agent.close()
            await wait_until(lambda: "agent1" not in sat.node.connections, what="drop seen")
            # Nobody looks at the console after the drop: its timer still samples.
            sat.console.sample()
            await asyncio.sleep(1.5)          # housekeeping ticks (1 s), checkpoints
            gc.collect()
            # (Connections have __slots__ without __weakref__: look for it instead.)
            held = [c for c in gc.get_objects() if type(c) is session_type
                    and c.state == "closed" and "agent1" in repr(c)]
            assert not held, (
                f"the dropped session {held[0]!r} is still referenced by "
                f"{sorted({type(r).__name__ for r in gc.get_referrers(held[0])})}")
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=60)
