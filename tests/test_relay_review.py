"""Relay faults a review found (2026-12-07), each failing on the code before its fix: a
child's own routerOrigin on a message without ts was passed on (and silenced another
agent at the next hop); a child's ts inside event::ExecutedCommand reached the parent
as ours (and one in the future made it drop our later messages)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from router.protocol import jsonrpc
from tests.chainsim import start_cluster, stop_all
from tests.nodeutil import check_result


# A child can forge ``routerOrigin`` on a message without ``ts``: the relay passes the
# key on unchanged, the next hop believes it (the relay may speak for every zone below it)
# and then drops the real messages of the impersonated origin as already processed.
#
# core.Node.on_message computes the origin only when the message has a ``ts``; without one
# ``origin`` stays None and jsonrpc.relay_payload copies msg.data, routerOrigin included.


@pytest.fixture
def chain(tmp_path):
    loop = asyncio.new_event_loop()
    sims, links = start_cluster(
        tmp_path, loop,
        [("master", ["master"], None), ("sat", ["sat1"], "master"),
         ("agent1", ["agent1"], "sat"), ("agent2", ["agent2"], "sat")],
        {"a1-s": ("agent1", "sat1"), "a2-s": ("agent2", "sat1"), "s-m": ("sat1", "master")})
    yield sims, links
    stop_all(sims, loop)


def test_relay_does_not_pass_on_a_childs_forged_router_origin(chain) -> None:
    sims, links = chain
    sat, master = sims["sat1"], sims["master"]
    # agent1 (a child) sends a result about its own host, without ts, claiming that the
    # message entered the chain at agent2 far in the future.
    forged = orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult",
                           "params": check_result("agent1", "own", "forged"),
                           "routerOrigin": ["agent2", 9_999_999_999.5]})
    sat.node.on_message(links["a1-s"].conn_b, jsonrpc.parse_message(forged))
    queued = links["s-m"].conn_a.queue
    frames, _ = queued.take(1 << 20)
    assert len(frames) == 1
    relayed = orjson.loads(frames[0][frames[0].index(b":") + 1:-1])
    # The relay must not vouch for an origin the child may not speak for.
    assert relayed.get("routerOrigin", [None])[0] != "agent2", relayed.get("routerOrigin")


def test_forged_origin_does_not_silence_another_agent_at_the_master(chain) -> None:
    sims, links = chain
    sat, master = sims["sat1"], sims["master"]
    forged = orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult",
                           "params": check_result("agent1", "own", "forged"),
                           "routerOrigin": ["agent2", 9_999_999_999.5]})
    sat.node.on_message(links["a1-s"].conn_b, jsonrpc.parse_message(forged))
    links["s-m"].deliver(True, 10)
    # agent2's genuine result, through the same satellite.
    assert sims["agent2"].node.originate("event::CheckResult",
                                         check_result("agent2", "real", "real"))
    assert links["a2-s"].deliver(True, 10) == 1
    assert links["s-m"].deliver(True, 10) == 1
    delivered = [svc for _, svc in master.delivered[-1]]
    assert "real" in delivered, delivered


# An ``event::ExecutedCommand`` is passed to the requester as the child's raw bytes
# (node.executions.Executions.executed: ``send_to(..., netstring.encode(msg.raw))``), so a
# ``ts`` the child put in it goes to our parent as if we had stamped it. The parent keeps
# the newest ``ts`` seen from us and silently drops everything older (Icinga's
# MessageHandler; the router's on_message the same): one child message with a future
# ``ts`` black-holes all our later traffic to the parent (Icinga even persists the
# position). Icinga never forwards a received ExecutedCommand as is.


UUID = "0b9f6c2e-3f1a-4c55-9d7e-2a6a1d8e4f10"


def _msg(data: dict) -> jsonrpc.Message:
    return jsonrpc.parse_message(orjson.dumps(data))


def test_a_childs_ts_in_executed_command_does_not_reach_the_parent(chain) -> None:
    sims, links = chain
    sat, master = sims["sat1"], sims["master"]
    now = time.time()
    # The master's API execution, relayed down through sat1 (golden message 10).
    sat.node.on_message(links["s-m"].conn_a, _msg({
        "jsonrpc": "2.0", "method": "event::ExecuteCommand",
        "params": {"command": "hostalive", "command_type": "check_command",
                   "deadline": now + 30, "endpoint": "agent1", "host": "agent1",
                   "macros": {}, "source": UUID}, "ts": now}))
    assert UUID in sat.node.executions.pending
    # agent1 answers, with a ts far ahead of sat1's clock.
    sat.node.on_message(links["a1-s"].conn_b, _msg({
        "jsonrpc": "2.0", "method": "event::ExecutedCommand",
        "params": {"end": now, "execution": UUID, "exit": 0, "host": "agent1",
                   "output": "PING OK", "start": now}, "ts": now + 86400.5}))
    links["s-m"].deliver(True, 10)
    # Now an ordinary result from another agent goes up through sat1.
    assert sims["agent2"].node.originate("event::CheckResult",
                                         check_result("agent2", "disk", "after"))
    assert links["a2-s"].deliver(True, 10) == 1
    links["s-m"].deliver(True, 10)
    delivered = [svc for _, svc in master.delivered[-1]]
    assert "disk" in delivered, (delivered, master.node.stale_dropped)
