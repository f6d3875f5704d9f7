"""Messages written to an endpoint that a reload moves to another zone end up in the log
of its *new* zone: replayed to that zone's endpoints, never to the zone they were for.

apply_to_node (router/node/reload.py) swaps ``node.topology`` and ``node.replay.zones``
first and closes the sessions of moved endpoints afterwards. When such a session ends,
Sessions.connection_lost hands its unconfirmed ledger and unsent queue to
ReplayManager.persist_written / persist_unsent (router/node/replay.py), which look the
zone up with ``self.node.topology.zone_of(conn.endpoint)``, i.e. in the new topology. The
frames (here SetNextCheck for host h1 of zone A) are appended to zone B's log and
replayed to B's endpoints, while A's other endpoint never gets them.
"""
from __future__ import annotations

import asyncio
import time

from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki

HOSTS = '[objects.hosts]\nh1 = "A"\n'


def test_unconfirmed_frames_of_a_moved_endpoint_stay_with_their_zone(tmp_path, run):
    names = ["p1", "m", "e1", "e2", "e3"]
    pki = make_test_pki(tmp_path / "pki", names)
    before = [("top", ["p1"], None), ("mid", ["m"], "top"),
              ("A", ["e1", "e2"], "mid"), ("B", ["e3"], "mid")]
    after = [("top", ["p1"], None), ("mid", ["m"], "top"),
             ("A", ["e2"], "mid"), ("B", ["e1", "e3"], "mid")]
    spec = ClusterSpec(tmp_path, pki, before)

    async def main():
        node_svc = await spec.start("m", extra=HOSTS)
        node = node_svc.node
        port = spec.port("m")
        peers = []
        try:
            parent = await FakePeer.connect(port, pki, "p1", server_name="m")
            e1 = await FakePeer.connect(port, pki, "e1", server_name="m")
            peers += [parent, e1]
            await wait_until(lambda: {"p1", "e1"} <= node.connected_names, what="sessions")
            now = time.time()
            for i in range(5):
                parent.send("event::SetNextCheck",
                            {"host": "h1", "next_check": now + 60 + i}, ts=now + i * 0.001)
            await wait_until(lambda: len(e1.messages("event::SetNextCheck")) == 5,
                             what="zone A's messages at e1")
            # e1 never confirmed them (no log::SetLogPosition): still in its ledger.

            moved = ClusterSpec(tmp_path, pki, after, ports=spec.ports)
            moved.config("m", extra=HOSTS)
            record = await node_svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["e1"], record.as_json()
            await e1.wait_closed()
            await asyncio.to_thread(node.replay.writer.flush, 5.0)

            e3 = await FakePeer.connect(port, pki, "e3", server_name="m")   # zone B
            e2 = await FakePeer.connect(port, pki, "e2", server_name="m")   # zone A
            peers += [e3, e2]
            await wait_until(lambda: {"e2", "e3"} <= node.connected_names, what="e2, e3")
            await asyncio.sleep(0.5)
            got_b = len(e3.messages("event::SetNextCheck"))
            got_a = len(e2.messages("event::SetNextCheck"))
            assert (got_a, got_b) == (5, 0), (
                f"zone A's unconfirmed SetNextCheck for h1: {got_a} replayed to zone A (e2), "
                f"{got_b} replayed to zone B (e3)")
        finally:
            for p in peers:
                await p.close()
            await node_svc.stop()

    run(main())


def test_unconfirmed_frames_of_a_removed_ha_endpoint_reach_its_zone_peer(tmp_path, run):
    """Same cause: e1 is removed from HA zone A; what it never confirmed is dropped
    (zone_of(e1) is None in the new topology) instead of kept in A's log for e2."""
    names = ["p1", "m", "e1", "e2"]
    pki = make_test_pki(tmp_path / "pki", names)
    before = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A", ["e1", "e2"], "mid")]
    after = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A", ["e2"], "mid")]
    spec = ClusterSpec(tmp_path, pki, before)

    async def main():
        node_svc = await spec.start("m", extra=HOSTS)
        node = node_svc.node
        port = spec.port("m")
        peers = []
        try:
            parent = await FakePeer.connect(port, pki, "p1", server_name="m")
            e1 = await FakePeer.connect(port, pki, "e1", server_name="m")
            peers += [parent, e1]
            await wait_until(lambda: {"p1", "e1"} <= node.connected_names, what="sessions")
            now = time.time()
            for i in range(5):
                parent.send("event::SetNextCheck",
                            {"host": "h1", "next_check": now + 60 + i}, ts=now + i * 0.001)
            await wait_until(lambda: len(e1.messages("event::SetNextCheck")) == 5,
                             what="zone A's messages at e1")
            ClusterSpec(tmp_path, pki, after, ports=spec.ports).config("m", extra=HOSTS)
            record = await node_svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["e1"], record.as_json()
            await e1.wait_closed()
            await asyncio.to_thread(node.replay.writer.flush, 5.0)
            e2 = await FakePeer.connect(port, pki, "e2", server_name="m")
            peers.append(e2)
            await wait_until(lambda: "e2" in node.connected_names, what="e2")
            await asyncio.sleep(0.5)
            assert len(e2.messages("event::SetNextCheck")) == 5, (
                "zone A's unconfirmed messages were dropped with the removed endpoint")
        finally:
            for p in peers:
                await p.close()
            await node_svc.stop()

    run(main())
