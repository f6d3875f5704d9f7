"""Node-level version of test_rename_race.py: a reload renames zone A to A2 while the
replay log's writer is busy; the first message for A2 after the reload (its endpoint was
disconnected by it, so the message is logged) reaches the writer in the same batch as
the rename op, is committed first and takes the name A2; the rename is refused and the
backlog kept for A is never replayed to e1 (router/node/replay.py rename_zone,
replaylog/writer.py _loop, replaylog/state.py rename_zone)."""
from __future__ import annotations

import asyncio
import threading
import time

from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki

NAMES = ["p1", "m", "e1"]
BEFORE = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A", ["e1"], "mid")]
AFTER = [("top", ["p1"], None), ("mid", ["m"], "top"), ("A2", ["e1"], "mid")]


def hosts(zone: str) -> str:
    return f'[objects.hosts]\nh1 = "{zone}"\n'


def send_next_checks(parent: FakePeer, n: int, base: float) -> None:
    now = time.time()
    for i in range(n):
        parent.send("event::SetNextCheck", {"host": "h1", "next_check": now + 60 + i},
                    ts=now + base + i * 0.001)


def test_backlog_of_a_renamed_zone_survives_a_message_logged_right_after_the_reload(
        tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", NAMES)
    spec = ClusterSpec(tmp_path, pki, BEFORE)

    async def main():
        svc = await spec.start("m", extra=hosts("A"))
        node = svc.node
        port = spec.port("m")
        peers = []
        release = threading.Event()
        try:
            parent = await FakePeer.connect(port, pki, "p1", server_name="m")
            peers.append(parent)
            await wait_until(lambda: "p1" in node.connected_names, what="p1")
            send_next_checks(parent, 5, 0.0)          # e1 away: zone A's log
            await wait_until(lambda: node.replay.persisted >= 5, what="5 records logged")
            await asyncio.to_thread(node.replay.writer.flush, 5.0)

            # The writer is busy (a long commit, a prune) while the reload is applied.
            busy = threading.Event()
            node.replay.writer.call(lambda: (busy.set(), release.wait(20)))
            await asyncio.to_thread(busy.wait, 5)

            ClusterSpec(tmp_path, pki, AFTER, ports=spec.ports).config("m", extra=hosts("A2"))
            record = await svc.reload("test")
            assert record.result == "ok", record.as_json()
            send_next_checks(parent, 1, 1.0)          # the next message, for A2
            await wait_until(lambda: node.replay.persisted >= 6, what="A2's record logged")
            release.set()
            await asyncio.to_thread(node.replay.writer.flush, 5.0)

            e1 = await FakePeer.connect(port, pki, "e1", server_name="m")
            peers.append(e1)
            await wait_until(lambda: "e1" in node.connected_names, what="e1 live")
            await asyncio.sleep(0.5)
            got = len(e1.messages("event::SetNextCheck"))
            assert got == 6, (
                f"e1 got {got} of the 6 SetNextCheck logged for its zone (5 as A before the "
                f"reload, 1 as A2 after): the rename A -> A2 was refused because A2's record "
                f"was committed before it; zones with records: "
                f"{node.replay.store.zones_with_records()}")
        finally:
            release.set()
            for p in peers:
                await p.close()
            await svc.stop()

    run(main())
