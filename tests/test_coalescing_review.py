"""Coalescing in a congested send queue (Node._fan_out keys a CheckResult by
(host, service); SendQueue.put drops the queued one whatever it holds).

1. Arrival order is not execution order (HA paths, late passive results, an agent's
   replay). Icinga's receiver skips a result whose execution_start is older than the
   one it has (Checkable::ProcessCheckResult, 2.13), so without coalescing the newest
   execution wins; with it the newer one is dropped and the stale one becomes the state.
2. A result that changes the state is not "superseded" by the next one: dropping it
   erases the problem (state history, notifications, soft/hard attempts) upstream.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from router.protocol import jsonrpc
from router.transport.sendqueue import QueueLimits, SendQueue
from tests.chainsim import start_cluster, stop_all
from tests.nodeutil import check_result


@pytest.fixture
def chain(tmp_path):
    loop = asyncio.new_event_loop()
    sims, links = start_cluster(
        tmp_path, loop,
        [("master", ["master"], None), ("sat", ["sat1"], "master"),
         ("agent1", ["agent1"], "sat")],
        {"a-s": ("agent1", "sat1"), "s-m": ("sat1", "master")})
    # sat1's queue towards master: congested after 2 messages.
    links["s-m"].conn_a.queue = SendQueue(QueueLimits(
        high_bytes=1 << 20, low_bytes=1 << 19, high_messages=2, low_messages=1,
        hard_bytes=1 << 22))
    yield sims, links
    stop_all(sims, loop)


def _send(sims, links, params: dict, ts: float) -> None:
    payload = orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult",
                            "params": params, "ts": ts})
    sims["sat1"].node.on_message(links["a-s"].conn_b, jsonrpc.parse_message(payload))


def _congest(sims, links, ts: float) -> float:
    for i in range(2):
        ts += 0.001
        _send(sims, links, check_result("agent1", f"filler{i}", "filler"), ts)
    assert links["s-m"].conn_a.queue.congested
    return ts


def test_an_older_execution_arriving_later_does_not_replace_the_newer(chain) -> None:
    sims, links = chain
    ts = _congest(sims, links, time.time())
    now = time.time()
    newer = check_result("agent1", "disk", "newer", state=2, now=now)
    older = check_result("agent1", "disk", "older", state=0, now=now - 60)
    _send(sims, links, newer, ts + 0.001)   # executed last, arrives first
    _send(sims, links, older, ts + 0.002)   # executed 60 s earlier, arrives second
    links["s-m"].deliver(True, 100)
    outputs = [cr["output"] for cr in _delivered_crs(sims["master"], "disk")]
    # Icinga would end with "newer" (it skips the older execution); here it must at
    # least reach the master.
    assert "newer" in outputs, outputs


def test_a_state_change_is_not_coalesced_away(chain) -> None:
    sims, links = chain
    ts = _congest(sims, links, time.time())
    now = time.time()
    crit = check_result("agent1", "http", "CRITICAL - down", state=2, now=now)
    ok = check_result("agent1", "http", "OK - back", state=0, now=now + 1)
    _send(sims, links, crit, ts + 0.001)    # OK -> CRITICAL
    _send(sims, links, ok, ts + 0.002)      # CRITICAL -> OK
    links["s-m"].deliver(True, 100)
    outputs = [cr["output"] for cr in _delivered_crs(sims["master"], "http")]
    assert "CRITICAL - down" in outputs, outputs


def _delivered_crs(sim, service):
    # Every frame the master's result view was handed for this service, in order.
    return [cr for host, svc, cr in sim.seen if svc == service]


@pytest.fixture(autouse=True)
def _record(monkeypatch):
    """Record each cr the master's ResultStore is given (the view keeps the latest)."""
    from tests import chainsim
    original = chainsim.RecordingResults.update

    def update(self, host, service, cr, *args, **kwargs):
        self.sim_seen.append((host, service or "", cr))
        return original(self, host, service, cr, *args, **kwargs)
    monkeypatch.setattr(chainsim.RecordingResults, "update", update)
    start = chainsim.SimNode.start

    def start_and_hook(self):
        node = start(self)
        self.seen = []
        if node.results is not None:
            node.results.sim_seen = self.seen
        return node
    monkeypatch.setattr(chainsim.SimNode, "start", start_and_hook)
