"""A reload that renames a zone (same endpoints, same hosts, new name) strands the
zone's replay log under the old name: nothing logged for the zone before the reload is
ever replayed to its endpoints, neither the backlog kept while they were away nor the
frames written to them and not yet confirmed when the reload closed their sessions."""
from __future__ import annotations

import asyncio
import time

from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki

NAMES = ["p1", "m", "e1"]
BEFORE = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A", ["e1"], "mid")]
AFTER = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A2", ["e1"], "mid")]


def hosts(zone: str) -> str:
    return f'[objects.hosts]\nh1 = "{zone}"\n'


def send_next_checks(parent: FakePeer, n: int = 5) -> None:
    now = time.time()
    for i in range(n):
        parent.send("event::SetNextCheck", {"host": "h1", "next_check": now + 60 + i},
                    ts=now + i * 0.001)


def test_backlog_of_a_renamed_zone_reaches_its_endpoint(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", NAMES)
    spec = ClusterSpec(tmp_path, pki, BEFORE)

    async def main():
        svc = await spec.start("m", extra=hosts("A"))
        node = svc.node
        port = spec.port("m")
        peers = []
        try:
            parent = await FakePeer.connect(port, pki, "p1", server_name="m")
            peers.append(parent)
            await wait_until(lambda: "p1" in node.connected_names, what="p1")
            # e1 (zone A) is away: zone A's messages go to its replay log.
            send_next_checks(parent)
            await wait_until(lambda: node.replay.persisted >= 5, what="5 records logged")
            await asyncio.to_thread(node.replay.writer.flush, 5.0)

            ClusterSpec(tmp_path, pki, AFTER, ports=spec.ports).config("m", extra=hosts("A2"))
            record = await svc.reload("test")
            assert record.result == "ok", record.as_json()

            e1 = await FakePeer.connect(port, pki, "e1", server_name="m")
            peers.append(e1)
            await wait_until(lambda: "e1" in node.connected_names, what="e1 live")
            await asyncio.sleep(0.5)
            got = len(e1.messages("event::SetNextCheck"))
            assert got == 5, (
                f"e1 got {got} of the 5 SetNextCheck logged for its zone while it was away: "
                f"the zone was renamed A -> A2 by a reload and its log stayed under 'A' "
                f"(store zones with records: {node.replay.store.zones_with_records()})")
        finally:
            for p in peers:
                await p.close()
            await svc.stop()

    run(main())


def test_unconfirmed_frames_of_a_renamed_zone_reach_its_endpoint(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", NAMES)
    spec = ClusterSpec(tmp_path, pki, BEFORE)

    async def main():
        svc = await spec.start("m", extra=hosts("A"))
        node = svc.node
        port = spec.port("m")
        peers = []
        try:
            parent = await FakePeer.connect(port, pki, "p1", server_name="m")
            e1 = await FakePeer.connect(port, pki, "e1", server_name="m")
            peers += [parent, e1]
            await wait_until(lambda: {"p1", "e1"} <= node.connected_names, what="sessions")
            send_next_checks(parent)
            # e1 reads them and never confirms (no log::SetLogPosition): in its ledger.
            await wait_until(lambda: len(e1.messages("event::SetNextCheck")) == 5,
                             what="5 SetNextCheck at e1")

            ClusterSpec(tmp_path, pki, AFTER, ports=spec.ports).config("m", extra=hosts("A2"))
            record = await svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["e1"], record.as_json()
            await e1.wait_closed()
            await asyncio.to_thread(node.replay.writer.flush, 5.0)

            again = await FakePeer.connect(port, pki, "e1", server_name="m")
            peers.append(again)
            await wait_until(lambda: "e1" in node.connected_names, what="e1 live again")
            await asyncio.sleep(0.5)
            got = len(again.messages("event::SetNextCheck"))
            assert got == 5, (
                f"e1's new session got {got} of the 5 SetNextCheck it never confirmed: the "
                f"reload kept them in the log of its old zone 'A', which no longer exists "
                f"(renamed A2), so they are never replayed")
        finally:
            for p in peers:
                await p.close()
            await svc.stop()

    run(main())
