"""Replay log faults a review found (2026-12-07), each failing on the code before its
fix: a truncated receive-positions file killed the node with SIGBUS (an emptied one was
started over silently); one moment of a full disk lowered the log's cap for good; a
disordered zone whose frames were still on their way to the file was replayed newest
first (the older ones lost); a zone that keeps no log any more was never pruned; a
replay went live only when no zone had records on their way to the file."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from types import SimpleNamespace

from replaylog import ReceivedPositions, ReplayStore, ReplayWriter
from router.node.replay import STALE_ZONE, ReplayManager
from tests.test_storage_faults import ZONES, FAST, ClusterSpec, pki, serve, tmpfs  # noqa: F401


# A truncated DATA_DIR/received/data.mdb kills ``router serve`` with SIGBUS at every start.
#
# The replay log and the writers' queue check the file's size before and after LMDB maps
# it (``replaylog/lmdbfile.py``; docs/reliability.md, "Storage faults": "Both stores check
# the file's size"). ``ReceivedPositions`` (``replaylog/received.py``), opened by
# ``ReplayManager`` beside the log, does not: a file cut short (full disk while copying a
# backup, a bad restore) is mapped and the first read of a page beyond its end is SIGBUS
# -- no exception, no log line, no recovery command, and the node dies again at every
# restart.


def test_serve_reports_a_truncated_received_positions_file(tmp_path, pki):  # noqa: F811
    spec = ClusterSpec(tmp_path, pki, ZONES, timeouts=FAST)
    config = tmp_path / "sat1.toml"
    spec.config("sat1")
    received = tmp_path / "sat1" / "received"
    with ReceivedPositions(received) as positions:
        positions.save({f"agent{i}": 1000.5 + i for i in range(3000)})
    data = received / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    proc = serve(config, tmp_path)
    assert proc.returncode != -signal.SIGBUS, (
        f"router serve died of SIGBUS (returncode {proc.returncode}); stderr tail: "
        f"{proc.stderr[-300:]!r}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(data) in errors[0], proc.stderr


def test_an_emptied_received_positions_file_is_not_silently_started_over(tmp_path):
    """Cut to 0 bytes, the same file is taken for a new one: every processed position and
    recent stamp is gone without a word, and the restarted node processes its peers'
    replays again (duplicates to the writers). The replay log refuses the same damage
    (``ReplayLogCorrupt``, "the file is 0 bytes")."""
    import pytest
    from replaylog import ReplayLogError

    received = tmp_path / "received"
    with ReceivedPositions(received) as positions:
        positions.save({"agent1": 1000.5})
    os.truncate(received / "data.mdb", 0)
    with pytest.raises(ReplayLogError, match="data.mdb"):
        with ReceivedPositions(received) as positions:
            positions.load()


# One moment of a full disk shrinks the replay log's cap for the rest of the process.
#
# ``AppendOps._append_retrying`` sets ``_soft_cap = total_bytes * 3 // 4`` on ENOSPC and
# nothing ever raises it again (``_effective_cap`` takes the lower of the two). When the
# disk filled while the log was small (another program filled the disk, a log rotation,
# a core dump), the log keeps at most a few KiB from then on: after the space is freed,
# every new record for an absent peer is evicted at once (counted as evicted) until the
# node is restarted -- the log is useless although the disk has room again.


def test_the_cap_comes_back_once_the_disk_has_room_again(tmp_path):
    with tmpfs(tmp_path / "fs", "2m") as fs:
        store = ReplayStore(fs / "rl")
        try:
            # A small log: 10 records of 500 bytes for the absent parent.
            store.append_many([("master", 100.0 + j, b"x" * 500, None) for j in range(10)])
            filler = fs / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, bytes(65536)):       # another program fills the disk
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            try:
                store.append_many([("master", 200.0 + j, b"y" * 500, None)
                                   for j in range(400)])
            except Exception:
                pass                                    # not stored: counted, fine
            assert store.stats()["disk_full"] >= 1
            filler.unlink()                             # the space is freed
            # 100 records (~53 KB) on a disk with ~2 MB free, far below the 1 GiB cap.
            store.append_many([("master", 1000.0 + j, b"z" * 500, None) for j in range(100)])
            stats = store.stats()
            kept = [r.ts for r in store.iter_from("master", 999.0)]
            assert len(kept) == 100, (
                f"after the disk has room again only {len(kept)} of 100 new records are "
                f"kept; effective_max_bytes={stats['effective_max_bytes']} "
                f"(max_bytes={stats['max_bytes']}), evicted={stats['evicted']}")
        finally:
            store.close()


# The ts-order replay is chosen from the committed mirror before pending records are
# flushed: a zone made disordered by records still waiting for the writer is replayed in
# seq order, newer frames before older ones, and the receiver drops the older ones.
#
# ``ReplayManager._replay`` asks ``store.zone_disordered(zone)`` first and only flushes the
# writer later (in the read loop, or inside ``_replay_in_ts_order``). Both HA masters'
# sessions drop (zone ``master``): master1's unconfirmed ledger (ts 20..29) and then
# master2's (ts 10..19) go to the log -- the case the ts-order replay exists for
# (docs/reliability.md, tests/test_receipts_ha_dualhomed.py). If the writer has not
# committed them yet when master1 comes back (a slow disk, a backlog), the flag is still
# clear, the replay streams seq order: 20..29, 10..19, and master1 (Icinga's rule, and
# ours) drops 10..19 as older than what it already had on the connection: lost there.


class FakeQueue:
    congested = False

    def __init__(self):
        self.frames = []

    def put(self, frame, method):
        self.frames.append(frame)


def frame(ts: float) -> bytes:
    body = b'{"ts":%r}' % ts
    return b"%d:%s," % (len(body), body)


def test_pending_disorder_is_replayed_in_ts_order(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        zones = {"master": SimpleNamespace(endpoints=("master1", "master2")),
                 "sat": SimpleNamespace(endpoints=("sat1",))}
        topology = SimpleNamespace(local_zone="sat", parent_zone="master", child_zones=(),
                                   zone=zones.get, zone_of=lambda ep: "master")
        host = SimpleNamespace(
            name="sat1", loop=loop, topology=topology,
            config=SimpleNamespace(endpoint_log_duration={}),
            receipts=SimpleNamespace(attach=lambda writer, received: 0),
            connections={},
            replay_done=lambda conn, count, seconds: done.set_result(count),
            wait_drained=lambda conn: loop.create_future())
        writer = ReplayWriter.open(tmp_path / "replaylog", sync=False)
        manager = ReplayManager(host, writer)
        slow_disk = threading.Event()
        try:
            busy = threading.Event()

            def slow_commit():
                busy.set()
                slow_disk.wait(30)
            writer.call(slow_commit)                  # the writer is busy (a slow commit)
            assert busy.wait(10)
            for ts in range(20, 30):                  # master1's ledger, drained first
                assert writer.submit("master", ts + 0.5, frame(ts + 0.5))
            for ts in range(10, 20):                  # master2's ledger, older stamps
                assert writer.submit("master", ts + 0.5, frame(ts + 0.5))
            flushing = threading.Event()
            real_flush = writer.flush

            def flush(timeout=None):
                flushing.set()
                slow_disk.set()                       # the disk catches up now
                return real_flush(timeout)
            writer.flush = flush
            conn = SimpleNamespace(endpoint="master1", state="open", queue=FakeQueue(),
                                   schedule_flush=lambda: None)
            host.connections["master1"] = conn
            manager.start(conn)
            count = await asyncio.wait_for(done, 15.0)
            sent = [float(f[f.index(b'"ts":') + 5:-2]) for f in conn.queue.frames]
            assert count == 20
            assert sent == sorted(sent), (
                f"replayed out of ts order: {sent}; the receiver drops every frame older "
                "than one it already had")
        finally:
            slow_disk.set()
            await loop.run_in_executor(None, writer.close, 10.0)
            manager.received.close()

    asyncio.run(main())


# Records of a zone that no longer keeps a log are never pruned.
#
# ``ReplayStore.prune`` documents that "a zone without eligible endpoints (all 0, or an
# empty list) keeps nothing", but ``ReplayManager.housekeeping`` only passes
# ``self.zones`` -- the zones that still keep a log. A zone whose endpoints got
# ``log_duration = 0`` (the operator turns the log off for it), or that left the config,
# keeps its records on disk for ever: they never expire, count against the 1 GiB cap and
# its fair shares, and stay in ``router_replay_log_records{zone}``.


def test_a_zone_without_a_log_is_emptied_by_housekeeping(tmp_path):
    path = tmp_path / "replaylog"
    old = time.time() - 10 * 86400                       # ten days old: long expired
    with ReplayStore(path) as store:
        store.append_many([("agent", old + i, b"2:{},", None) for i in range(100)])

    async def main():
        loop = asyncio.get_running_loop()
        zones = {"agent": SimpleNamespace(endpoints=("agent1",)),
                 "sat": SimpleNamespace(endpoints=("sat1",))}
        topology = SimpleNamespace(local_zone="sat", parent_zone=None, child_zones=("agent",),
                                   zone=zones.get, zone_of=lambda ep: "agent")
        host = SimpleNamespace(
            name="sat1", loop=loop, topology=topology,
            # the operator turned the agent's log off
            config=SimpleNamespace(endpoint_log_duration={"agent1": 0.0}),
            receipts=SimpleNamespace(attach=lambda writer, received: 0), connections={})
        writer = ReplayWriter.open(path)
        manager = ReplayManager(host, writer)
        try:
            assert "agent" not in manager.zones
            manager.housekeeping(time.monotonic())
            await asyncio.wrap_future(writer.call(lambda: None))
            left = writer.store.zone_records("agent")
            assert left == 0, (f"{left} records of zone 'agent' (log_duration 0, 10 days "
                               "old) are still in the replay log after housekeeping")
        finally:
            await loop.run_in_executor(None, writer.close, 10.0)
            manager.received.close()

    asyncio.run(main())


def test_a_zone_that_left_the_configuration_keeps_its_records_for_the_default_duration(
        tmp_path):
    now = time.time()
    with ReplayStore(tmp_path / "rl") as store:
        store.append_many([("gone", now - 200_000, b"2:{},", None),
                           ("gone", now - 10, b"2:{},", None)])
        store.prune(now, {"gone": (STALE_ZONE,)}, {})
        assert [r.ts for r in store.iter_from("gone", 0.0)] == [now - 10]


# A replay never goes live while logged traffic for *another* zone keeps the writer busy.
#
# ``ReplayManager._replay`` goes live only when a read finds nothing new for the zone AND
# ``writer.pending`` is 0 -- a global count over every zone. A satellite whose parent is
# away logs every result for the parent zone; an agent that reconnects meanwhile (its own
# zone's log holds a few commands) keeps polling the writer and never joins the connected
# set: every message for it goes through the replay log for as long as the other traffic
# flows, and ``router_replay_in_progress`` never clears.
#
# Severity note: the feeder here submits every loop turn (~86 000 records/s on the review
# machine). At 500-20 000/s the replay went live within ~1-2 s in trials, so this is a
# liveness problem of very high sustained logging rates only.


def make_host(loop, done):
    zones = {"agent": SimpleNamespace(endpoints=("agent1",)),
             "master": SimpleNamespace(endpoints=("master1",)),
             "sat": SimpleNamespace(endpoints=("sat1",))}
    topology = SimpleNamespace(local_zone="sat", parent_zone="master", child_zones=("agent",),
                               zone=zones.get,
                               zone_of=lambda ep: {"agent1": "agent", "master1": "master"}.get(ep))
    host = SimpleNamespace(
        name="sat1", loop=loop, topology=topology,
        config=SimpleNamespace(endpoint_log_duration={}),
        receipts=SimpleNamespace(attach=lambda writer, received: 0),
        connections={},
        replay_done=lambda conn, count, seconds: done.set_result(count),
        wait_drained=lambda conn: loop.create_future())
    return host


def test_replay_goes_live_while_another_zone_is_being_logged(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        host = make_host(loop, done)
        writer = ReplayWriter.open(tmp_path / "replaylog", sync=False)
        manager = ReplayManager(host, writer)
        try:
            # Agent's backlog: 10 commands logged while it was away.
            for i in range(10):
                writer.submit("agent", 1000.0 + i, b"2:{},", None)
            assert await writer.aflush()
            stop = False

            async def parent_traffic():
                # Results for the absent parent zone, as a satellite logs them.
                for n in itertools.count():
                    if stop:
                        return
                    writer.submit("master", 2000.0 + n * 1e-3, b"2:{},", None)
                    await asyncio.sleep(0)

            feeder = asyncio.create_task(parent_traffic())
            conn = SimpleNamespace(endpoint="agent1", state="open", queue=FakeQueue(),
                                   schedule_flush=lambda: None)
            host.connections["agent1"] = conn
            manager.start(conn)
            try:
                count = await asyncio.wait_for(asyncio.shield(done), 15.0)
            except asyncio.TimeoutError:
                count = None
            stop = True
            await feeder
            for t in list(manager._tasks):
                t.cancel()
            assert count == 10, (
                f"agent1's replay of its 10 records never went live in 15 s "
                f"(sent {len(conn.queue.frames)}, writer pending {writer.pending}): it "
                "waits for writer.pending == 0 across all zones")
        finally:
            await loop.run_in_executor(None, writer.close, 10.0)
            manager.received.close()

    asyncio.run(main())
