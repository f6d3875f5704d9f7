"""Unit tests of ``replaylog.store.ReplayStore``: the synchronous LMDB layer."""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replaylog import (
    PruneStats,
    Record,
    ReplayLogBusy,
    ReplayLogCorrupt,
    ReplayLogDiskFull,
    ReplayLogError,
    ReplayStore,
    reset,
)
from replaylog import keys as K
from replaylog.env import DISK_RESERVE_BYTES, DISK_RESERVE_FILE
from replaylog.errors import InvalidState
from router.cli import OPERATOR_ERRORS

KiB = 1024
MiB = 1024 * KiB


def frame(n: int, size: int = 0) -> bytes:
    """A netstring frame that says which record it is (padded to ``size`` bytes)."""
    body = b'{"n":%d}' % n
    if size > len(body) + 3:
        body += b" " * (size - len(body) - len(b"%d:," % (size,)))
    return b"%d:%b," % (len(body), body)


def rec_size(fr: bytes) -> int:
    """What one record costs in the byte accounting."""
    return K.KEY_SIZE + K.HEADER_SIZE + len(fr)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "replaylog"


@pytest.fixture
def store(path: Path):
    s = ReplayStore(path)
    yield s
    s.close()


def frames_of(records) -> list[bytes]:
    return [r.frame for r in records]


# -- ordering and iteration -------------------------------------------------------------


def test_records_come_back_in_order_with_their_fields(store: ReplayStore) -> None:
    last = store.append_many([("agent-1", 100.0 + i, frame(i), None) for i in range(5)])
    assert last == 5
    last = store.append_many([("agent-1", 105.0, frame(5), "agent-1"),
                              ("agent-1", 106.0, frame(6), "global-templates")])
    assert last == 7
    got = list(store.iter_from("agent-1"))
    assert [r.seq for r in got] == list(range(1, 8))
    assert [r.ts for r in got] == [100.0 + i for i in range(7)]
    assert frames_of(got) == [frame(i) for i in range(7)]
    assert [r.object_zone for r in got] == [None] * 5 + ["agent-1", "global-templates"]
    assert all(isinstance(r, Record) and type(r.frame) is bytes for r in got)


def test_iteration_from_a_position_returns_only_newer_records(store: ReplayStore) -> None:
    store.append_many([("z", float(i), frame(i), None) for i in range(100)])
    assert [r.ts for r in store.iter_from("z", 49.0)] == [float(i) for i in range(50, 100)]
    assert [r.ts for r in store.iter_from("z", 49.5)] == [float(i) for i in range(50, 100)]
    assert list(store.iter_from("z", 99.0)) == []
    assert len(list(store.iter_from("z", -1.0))) == 100
    assert [r.ts for r in store.iter_from("z", 10.0, limit=3)] == [11.0, 12.0, 13.0]
    # Small chunks: several read transactions, same result.
    assert [r.ts for r in store.iter_from("z", 89.0, chunk=3)] == [
        float(i) for i in range(90, 100)]


def test_equal_timestamps_are_all_after_a_smaller_position(store: ReplayStore) -> None:
    store.append_many([("z", ts, frame(i), None)
                       for i, ts in enumerate([1.0, 2.0, 2.0, 2.0, 3.0])])
    assert [r.seq for r in store.iter_from("z", 1.5)] == [2, 3, 4, 5]
    assert [r.seq for r in store.iter_from("z", 2.0)] == [5]


def test_read_batch_resumes_after_a_seq_and_bounds_bytes(store: ReplayStore) -> None:
    store.append_many([("z", float(i), frame(i, 1000), None) for i in range(10)])
    first = store.read_batch("z", limit=4)
    assert [r.seq for r in first] == [1, 2, 3, 4]
    assert [r.seq for r in store.read_batch("z", after_seq=4, limit=4)] == [5, 6, 7, 8]
    assert [r.seq for r in store.read_batch("z", max_bytes=2500)] == [1, 2, 3]
    assert [r.seq for r in store.read_batch("z", max_bytes=1)] == [1]   # at least one
    assert store.read_batch("z", limit=0) == []


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.floats(-5, 10, allow_nan=False), min_size=0, max_size=60),
       after=st.floats(-10, 400, allow_nan=False), chunk=st.integers(1, 7),
       batch=st.integers(1, 9))
def test_iteration_matches_a_filter_even_when_the_clock_steps_back(
        store: ReplayStore, steps: list[float], after: float, chunk: int, batch: int) -> None:
    # Monotonic stretches use the binary search, any step back forces a filtered scan.
    zone = f"zone-{next(_zone_counter)}"
    ts = list(itertools.accumulate(steps, initial=100.0))[1:]
    records = [(zone, t, frame(i), None) for i, t in enumerate(ts)]
    for start in range(0, len(records), batch):
        store.append_many(records[start:start + batch])
    expected = [(i + 1, t) for i, t in enumerate(ts) if t > after]
    got = [(r.seq, r.ts) for r in store.iter_from(zone, after, chunk=chunk)]
    assert got == expected


_zone_counter = itertools.count()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.floats(-5, 10, allow_nan=False), min_size=0, max_size=60),
       after=st.floats(-10, 400, allow_nan=False), chunk=st.integers(1, 7))
def test_ts_order_and_read_seqs_give_the_records_after_a_position_in_ts_order(
        store: ReplayStore, steps: list[float], after: float, chunk: int) -> None:
    """What the replay of a zone whose ts went backwards sends (router.node.replay)."""
    zone = f"zone-{next(_zone_counter)}"
    ts = list(itertools.accumulate(steps, initial=100.0))[1:]
    if ts:
        store.append_many([(zone, t, frame(i), None) for i, t in enumerate(ts)])
    assert store.zone_disordered(zone) == any(b < a for a, b in zip(ts, ts[1:]))
    expected = sorted(((t, i + 1) for i, t in enumerate(ts) if t > after))
    order = store.ts_order(zone, after, chunk=chunk)
    assert order == [seq for _, seq in expected]
    records = store.read_seqs(zone, order)
    assert [(r.ts, r.seq) for r in records] == expected
    assert [r.frame for r in records] == [frame(seq - 1) for _, seq in expected]
    assert store.read_seqs(zone, [10_000]) == []          # gone: skipped


def test_zones_are_isolated(store: ReplayStore) -> None:
    store.append_many([("a", 1.0, frame(1), None), ("b", 2.0, frame(2), None),
                       ("a", 3.0, frame(3), None), ("c", 0.5, frame(4), "a")])
    assert frames_of(store.iter_from("a")) == [frame(1), frame(3)]
    assert frames_of(store.iter_from("b")) == [frame(2)]
    assert frames_of(store.iter_from("c")) == [frame(4)]
    assert [r.seq for r in store.iter_from("b")] == [1]      # seqs are per zone
    assert list(store.iter_from("nope")) == []
    stats = store.stats()
    assert set(stats["zones"]) == {"a", "b", "c"}             # object zones have no records
    assert stats["zones"]["a"]["records"] == 2
    # A zone with a lower id keeps working after a higher one was appended (no append
    # fast path for it, but order is kept).
    store.append_many([("a", 4.0, frame(5), None)])
    assert frames_of(store.iter_from("a")) == [frame(1), frame(3), frame(5)]


def test_bad_names_are_refused(store: ReplayStore) -> None:
    with pytest.raises(ValueError):
        store.append_many([("", 1.0, b"x", None)])
    with pytest.raises(ValueError):
        store.append_many([("z" * 600, 1.0, b"x", None)])
    assert store.stats()["records"] == 0


# -- persistence ----------------------------------------------------------------------------


def test_reopening_keeps_records_zone_ids_positions_and_totals(path: Path) -> None:
    s = ReplayStore(path)
    s.append_many([(z, float(i), frame(i), "obj") for i in range(10) for z in ("x", "y")])
    s.confirm("ep1", 4.0)
    s.prune(20.0, {"x": ["ep1"]}, {})          # x: ts 0..4 confirmed and gone
    ids, stats, position = dict(s._ids), s.stats(), s.position("ep1")
    s.close()

    s = ReplayStore.open(path)
    try:
        assert s._ids == ids
        again = s.stats()
        for key in ("records", "bytes", "zones", "evicted"):
            assert again[key] == stats[key], key
        assert s.total_bytes == stats["bytes"] == sum(z["bytes"] for z in
                                                       stats["zones"].values())
        assert s.position("ep1") == position == 4.0
        assert [r.ts for r in s.iter_from("x")] == [float(i) for i in range(5, 10)]
        assert [r.object_zone for r in s.iter_from("y")] == ["obj"] * 10
        # Sequences continue where they were.
        assert s.append_many([("x", 11.0, frame(11), None)]) == 11
    finally:
        s.close()


def test_a_zone_emptied_by_prune_does_not_reuse_seqs(store: ReplayStore) -> None:
    store.append_many([("z", float(i), frame(i), None) for i in range(3)])
    store.prune(100.0, {"z": []}, {})
    assert store.stats()["zones"]["z"]["records"] == 0
    assert store.append_many([("z", 200.0, frame(9), None)]) == 4


def test_zone_records_counts_committed_records(store: ReplayStore) -> None:
    assert store.zone_records("z") == 0                 # never written
    store.append_many([("z", float(i), frame(i), None) for i in range(3)])
    store.append_many([("y", 1.0, frame(1), None)])
    assert (store.zone_records("z"), store.zone_records("y")) == (3, 1)
    store.confirm("e", 1.0)
    store.prune(100.0, {"z": ["e"]}, {})
    assert store.zone_records("z") == 1                 # ts 2.0 is not confirmed


def test_byte_totals_are_key_plus_value_bytes(store: ReplayStore) -> None:
    frames = [frame(i, 100 + i) for i in range(7)]
    store.append_many([("z", float(i), f, None) for i, f in enumerate(frames)])
    assert store.total_bytes == sum(rec_size(f) for f in frames)
    assert store.stats()["zones"]["z"]["bytes"] == store.total_bytes


# -- retention ----------------------------------------------------------------------------


def fill(store: ReplayStore, zone: str, timestamps) -> None:
    store.append_many([(zone, float(t), frame(int(t)), None) for t in timestamps])


def ts_of(store: ReplayStore, zone: str) -> list[float]:
    return [r.ts for r in store.iter_from(zone)]


def test_prune_deletes_what_every_endpoint_of_the_zone_confirmed(store: ReplayStore) -> None:
    fill(store, "sat", range(1, 11))
    fill(store, "agent", range(1, 11))
    store.confirm("sat1", 7.0)
    store.confirm("sat2", 4.0)
    now = 20.0   # nothing is older than a day
    stats = store.prune(now, {"sat": ["sat1", "sat2"], "agent": ["agent1"]}, {})
    assert stats.confirmed == {"sat": 4}          # up to the slower HA member
    assert stats.expired == stats.disabled == {}
    assert stats.bytes == sum(rec_size(frame(i)) for i in range(1, 5))
    assert ts_of(store, "sat") == [float(i) for i in range(5, 11)]
    assert ts_of(store, "agent") == [float(i) for i in range(1, 11)]  # never confirmed
    store.confirm("sat2", 9.0)
    assert store.prune(now, {"sat": ["sat1", "sat2"]}, {}).confirmed == {"sat": 3}
    assert ts_of(store, "sat") == [8.0, 9.0, 10.0]


def test_prune_by_log_duration(store: ReplayStore) -> None:
    day = 86400.0
    now = 10 * day
    fill(store, "z", [now - 3 * day, now - 2 * day, now - day - 1, now - 100, now])
    # Default duration is one day.
    assert store.prune(now, {"z": ["a"]}, {}).expired == {"z": 3}
    assert ts_of(store, "z") == [now - 100, now]
    # The largest duration of the zone's endpoints wins over a shorter one.
    fill(store, "y", [now - 5 * day, now - 3 * day, now - day])
    stats = store.prune(now, {"y": ["a", "b"]}, {"a": 3600.0, "b": 4 * day})
    assert stats.expired == {"y": 1}
    assert ts_of(store, "y") == [now - 3 * day, now - day]
    # A negative duration keeps records until they are confirmed.
    assert store.prune(now, {"y": ["c"]}, {"c": -1.0}).total == 0
    store.confirm("c", now - 2 * day)
    assert store.prune(now, {"y": ["c"]}, {"c": -1.0}).confirmed == {"y": 1}


def test_prune_follows_icingas_rule_per_endpoint(store: ReplayStore) -> None:
    # a (1 day) confirmed everything; b (1 h) confirmed nothing: records older than
    # b's hour are needed by nobody.
    now = 100000.0
    fill(store, "z", [now - 7200, now - 1800])
    store.confirm("a", now)
    stats = store.prune(now, {"z": ["a", "b"]}, {"a": 86400.0, "b": 3600.0})
    assert stats.total == 1 and ts_of(store, "z") == [now - 1800]


def test_log_duration_zero_means_no_retention(store: ReplayStore) -> None:
    fill(store, "agent", range(1, 6))
    fill(store, "sat", range(1, 6))
    stats = store.prune(10.0, {"agent": ["agent1"], "sat": ["s1", "s2"]},
                        {"agent1": 0, "s1": 0})
    assert stats.disabled == {"agent": 5}
    assert ts_of(store, "agent") == []
    # s2 still has the default duration and confirmed nothing.
    assert len(ts_of(store, "sat")) == 5
    # A zone not named is not touched; an empty endpoint list keeps nothing.
    fill(store, "other", range(1, 4))
    assert store.prune(10.0, {"sat": ["s1", "s2"]}, {"s1": 0}).total == 0
    assert store.prune(10.0, {"other": []}, {}).disabled == {"other": 3}


def test_prune_stops_at_the_first_record_still_needed(store: ReplayStore) -> None:
    # The clock stepped back: a confirmed record behind a newer one stays (the live
    # records of a zone stay a contiguous range) until the newer one goes.
    fill(store, "z", [1, 5, 2, 3])
    store.confirm("a", 3.0)
    assert store.prune(10.0, {"z": ["a"]}, {}).confirmed == {"z": 1}
    assert ts_of(store, "z") == [5.0, 2.0, 3.0]
    store.confirm("a", 6.0)
    assert store.prune(10.0, {"z": ["a"]}, {}).confirmed == {"z": 3}


def test_cap_evicts_fair_shares_and_counts(path: Path, caplog) -> None:
    """Issue 16 S7: over the cap, a zone over its equal share loses its own oldest
    records; a zone within its share loses none, however hard another zone floods."""
    f = frame(0, 200)
    size = rec_size(f)
    s = ReplayStore(path, max_bytes=100 * size)
    try:
        s.append_many([("a", float(t), f, None) for t in (1, 3, 5)]
                      + [("b", float(t), f, None) for t in (2, 4, 6)])
        # cap 3 records, 2 zones: a share of 1.5 each; both over, a (the older id) first
        assert s.enforce_cap(3 * size) == {"a": 2, "b": 1}
        assert ts_of(s, "a") == [5.0] and ts_of(s, "b") == [4.0, 6.0]
        assert s.enforce_cap() == {}
        stats = s.stats()
        assert stats["bytes"] == 3 * size
        assert (stats["zones"]["a"]["evicted"], stats["zones"]["b"]["evicted"]) == (2, 1)
        assert stats["evicted"] == 3
        # The cap holds on every append (same transaction). Zone a floods: once b is
        # within its share it evicts only its own oldest; b keeps its last record
        # instead of being pushed out (before issue 16 S7, b was emptied).
        for t in range(7, 17):
            s.append_many([("a", float(t), f, None)])
        assert s.total_bytes == 3 * size
        assert ts_of(s, "a") == [15.0, 16.0] and ts_of(s, "b") == [6.0]
        warnings = [r for r in caplog.records if "evicted" in r.getMessage()]
        assert len(warnings) == 2     # once per zone, however often it happens
        assert s.stats()["zones"]["a"]["evicted"] == 2 + 9
        assert s.stats()["zones"]["b"]["evicted"] == 1 + 1
    finally:
        s.close()
    s = ReplayStore(path)      # evicted totals are persistent
    assert s.stats()["evicted"] == 3 + 10
    s.close()


# -- a full map ----------------------------------------------------------------------------


def test_a_full_map_grows_and_every_append_succeeds(path: Path) -> None:
    s = ReplayStore(path, map_size=64 * KiB, max_map_size=64 * MiB)
    try:
        for i in range(100):
            s.append_many([("z", float(i * 10 + j), frame(i * 10 + j, 1024), None)
                           for j in range(10)])
        stats = s.stats()
        assert stats["map_full"] >= 1 and stats["map_grown"] >= 1
        assert stats["map_size"] > 64 * KiB and stats["evicted"] == 0
        assert [r.seq for r in s.iter_from("z")] == list(range(1, 1001))
    finally:
        s.close()
    s = ReplayStore(path, map_size=64 * KiB, max_map_size=64 * MiB)  # starts at grown size
    try:
        assert s.map_size >= stats["map_size"]
        assert s.stats()["records"] == 1000
    finally:
        s.close()


@pytest.mark.parametrize("map_size", [64 * KiB, 256 * KiB])
def test_a_full_map_that_cannot_grow_evicts_instead_of_raising(path: Path,
                                                               map_size: int) -> None:
    s = ReplayStore(path, map_size=map_size, max_map_size=map_size)
    try:
        n = 0
        for i in range(150):
            batch = [(f"z{i % 3}", float(n + j), frame(n + j, 1024), None) for j in range(4)]
            n += len(batch)
            s.append_many(batch)
        stats = s.stats()
        assert stats["map_full"] >= 1 and stats["evicted"] > 0
        assert stats["records"] == n - stats["evicted"] - stats["dropped"]
        assert stats["records"] > 0
        # What is left is each zone's newest records, intact and in order (the cap is
        # shared fairly between zones, issue 16 S7).
        kept = sorted(r.ts for z in ("z0", "z1", "z2") for r in s.iter_from(z))
        assert len(kept) == stats["records"]
        for z in ("z0", "z1", "z2"):
            mine = [float(4 * i + j) for i in range(150) if f"z{i % 3}" == z
                    for j in range(4)]
            got = [r.ts for r in s.iter_from(z)]
            assert got == mine[len(mine) - len(got):]
        assert n - 1 in kept      # the newest record of all is never the one evicted
        for z in ("z0", "z1", "z2"):
            recs = list(s.iter_from(z))
            assert all(r.frame == frame(int(r.ts), 1024) for r in recs)
    finally:
        s.close()


def test_a_record_bigger_than_the_map_is_dropped_and_counted(path: Path, caplog) -> None:
    s = ReplayStore(path, map_size=64 * KiB, max_map_size=64 * KiB)
    try:
        s.append_many([("z", 1.0, frame(1), None)])
        assert s.append_many([("z", 2.0, b"x" * (2 * MiB), None)]) == 0
        s.append_many([("z", 3.0, frame(3), None)])
        stats = s.stats()
        assert stats["dropped"] == 1
        assert ts_of(s, "z")[-1] == 3.0
        assert any("dropped" in r.getMessage() for r in caplog.records)
    finally:
        s.close()


def test_readers_in_other_threads_survive_map_growth(path: Path) -> None:
    s = ReplayStore(path, map_size=64 * KiB, max_map_size=256 * MiB, sync=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = []

    def reader() -> None:
        try:
            while not stop.is_set():
                recs = list(s.iter_from("z", chunk=16, limit=200))
                seqs = [r.seq for r in recs]
                assert seqs == list(range(1, len(seqs) + 1))
                seen.append(len(seqs))
                s.stats()
                # Replay in the node is paced by the network; a reader spinning flat out
                # only starves the writer of the GIL and makes this test slow.
                time.sleep(0.001)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            s.append_many([("z", float(i * 10 + j), frame(i * 10 + j, 1024), None)
                           for j in range(10)])
            if i % 30 == 0:
                time.sleep(0.01)     # let the readers in while the map is small
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert not errors, errors
        assert s.stats()["map_grown"] >= 3
        assert len(list(s.iter_from("z"))) == 3000
        assert seen
    finally:
        s.close()


def test_disk_full_evicts_once_then_reports(store: ReplayStore, monkeypatch) -> None:
    fill(store, "z", range(100))
    real = store._append
    failures = iter([True, False])

    def flaky(w, records):
        if next(failures, True):
            raise lmdb.DiskError("mdb_txn_commit", 28)
        return real(w, records)
    monkeypatch.setattr(store, "_append", flaky)
    assert store.append_many([("z", 100.0, frame(100), None)]) == 101   # after eviction
    assert store.disk_full == 1 and store.stats()["evicted"] > 0
    with pytest.raises(ReplayLogDiskFull) as info:
        store.append_many([("z", 101.0, frame(101), None)])
    assert isinstance(info.value, ReplayLogError) and isinstance(info.value, OPERATOR_ERRORS)
    assert ts_of(store, "z")[-1] == 100.0


def test_the_disk_reserve_is_given_up_for_an_eviction_that_cannot_commit(
        store: ReplayStore, monkeypatch) -> None:
    reserve = store.path / DISK_RESERVE_FILE
    assert reserve.stat().st_blocks * 512 >= DISK_RESERVE_BYTES
    fill(store, "z", range(100))
    real_append, real_evict = store._append, store._evict_and_tick
    appends = iter([True, False])

    def full_once(w, records):
        if next(appends, False):
            raise lmdb.DiskError("mdb_txn_commit", 28)
        return real_append(w, records)

    def evict_needs_the_reserve(target):
        if reserve.exists():
            raise lmdb.DiskError("mdb_txn_commit", 28)
        return real_evict(target)
    monkeypatch.setattr(store, "_append", full_once)
    monkeypatch.setattr(store, "_evict_and_tick", evict_needs_the_reserve)
    assert store.append_many([("z", 100.0, frame(100), None)]) == 101
    stats = store.stats()
    assert stats["disk_reserve_used"] == 1 and stats["evicted"] > 0
    # No reserve left: the next eviction that cannot commit is reported, not retried.
    appends = iter([True])
    evictions = []

    def never_commits(target):
        evictions.append(target)
        raise lmdb.DiskError("mdb_txn_commit", 28)
    monkeypatch.setattr(store, "_evict_and_tick", never_commits)
    with pytest.raises(ReplayLogDiskFull):
        store.append_many([("z", 101.0, frame(101), None)])
    assert len(evictions) == 1 and store.disk_reserve_used == 1


def test_the_disk_reserve_is_set_aside_again_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "rl"
    ReplayStore(path).close()
    (path / DISK_RESERVE_FILE).unlink()
    with ReplayStore(path, readonly=True):
        assert not (path / DISK_RESERVE_FILE).exists()      # a reader never writes
    with ReplayStore(path):
        assert (path / DISK_RESERVE_FILE).stat().st_size == DISK_RESERVE_BYTES


# -- confirmed positions -----------------------------------------------------------------


def test_positions_only_move_forward(store: ReplayStore) -> None:
    assert store.position("ep") == 0.0
    assert store.confirm("ep", 50.0, now=100.0) == 50.0
    assert store.confirm("ep", 10.0, now=100.0) == 50.0     # far past: kept, no change
    assert store.position("ep") == 50.0
    assert store.confirm("other", -1e9, now=100.0) == 0.0
    assert store.positions() == {"ep": 50.0}


def test_a_position_in_the_future_is_clamped_and_logged_once(store: ReplayStore,
                                                             caplog) -> None:
    now = 1_700_000_000.0
    assert store.confirm("ep", now + 3600, now=now) == now + 3600   # within a day: fine
    assert store.confirm("ep2", now + 10 * 86400, now=now) == now
    assert store.confirm("ep2", now + 20 * 86400, now=now) == now
    assert store.confirm("ep", now + 20 * 86400, now=now) == now + 3600  # kept the max
    # Without ``now`` the reference is the newest record or the clock, whichever later.
    ahead = time.time() + 5 * 86400
    fill(store, "z", [ahead])
    assert store.confirm("ep3", ahead + 0.5 * 86400) == ahead + 0.5 * 86400
    assert store.confirm("ep3", 1e15) == ahead + 0.5 * 86400   # clamped to ahead: no change
    assert store.position("ep3") == ahead + 0.5 * 86400
    before = time.time()
    assert before <= store.confirm("ep4", 1e16) <= time.time() + 10 * 86400
    assert store.clamped_positions == 5
    warnings = [r for r in caplog.records if "in the future" in r.getMessage()]
    assert [w.getMessage().split("'")[1] for w in warnings] == ["ep2", "ep", "ep3", "ep4"]
    assert store.confirm("ep5", math.nan) == 0.0
    with pytest.raises(ValueError):
        store.confirm("", 1.0)


# -- damaged files and reset ------------------------------------------------------------


def make_log(path: Path, n: int = 2000) -> None:
    with ReplayStore(path) as s:
        s.append_many([("z", float(i), frame(i, 1024), None) for i in range(n)])


def assert_names_file_and_command(err: ReplayLogCorrupt, path: Path) -> None:
    text = str(err)
    assert str(path / "data.mdb") in text
    assert f"router replaylog reset --data-dir {path.parent}" in text
    assert isinstance(err, ReplayLogError) and isinstance(err, OPERATOR_ERRORS)


def test_a_garbage_file_is_reported_with_the_recovery_command(path: Path) -> None:
    make_log(path)
    data = path / "data.mdb"
    size = data.stat().st_size
    data.write_bytes(os.urandom(size))
    with pytest.raises(ReplayLogCorrupt) as info:
        ReplayStore(path)
    assert_names_file_and_command(info.value, path)


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_a_truncated_file_is_reported(path: Path, keep: float) -> None:
    make_log(path)
    data = path / "data.mdb"
    os.truncate(data, int(data.stat().st_size * keep) if keep < 1 else int(keep))
    with pytest.raises(ReplayLogCorrupt) as info:
        ReplayStore(path)
    assert_names_file_and_command(info.value, path)


def test_damaged_counters_are_reported(path: Path) -> None:
    make_log(path, 10)
    env = lmdb.open(str(path), max_dbs=K.MAX_DBS)
    meta = env.open_db(K.META_DB)
    with env.begin(write=True) as txn:
        txn.put(K.META_TOTAL, K.TOTALS.pack(3, 3), db=meta)
    env.close()
    with pytest.raises(ReplayLogCorrupt, match="counters"):
        ReplayStore(path)


def test_reset_moves_the_broken_log_aside_and_starts_empty(path: Path) -> None:
    make_log(path)
    data = path / "data.mdb"
    garbage = os.urandom(data.stat().st_size)
    data.write_bytes(garbage)
    moved = reset(path)
    assert moved is not None and moved.name.startswith("replaylog.broken-")
    assert (moved / "data.mdb").read_bytes() == garbage          # kept for inspection
    with ReplayStore(path) as s:
        assert s.stats()["records"] == 0
        s.append_many([("z", 1.0, frame(1), None)])
    # A second reset in the same second does not overwrite the first one.
    data.write_bytes(b"\0" * 100)
    second = reset(path)
    assert second is not None and second != moved and (moved / "data.mdb").exists()
    assert reset(path.parent / "never-existed") is None
    assert (path.parent / "never-existed" / "data.mdb").exists()


def test_one_writer_per_log(path: Path) -> None:
    with ReplayStore(path):
        with pytest.raises(ReplayLogBusy):
            ReplayStore(path)
        with pytest.raises(ReplayLogBusy):
            reset(path)
    with ReplayStore(path):   # released on close
        pass


def test_read_only_store(path: Path) -> None:
    with pytest.raises(ReplayLogError):
        ReplayStore(path, readonly=True)
    make_log(path, 5)
    with ReplayStore(path, readonly=True) as ro:
        assert [r.seq for r in ro.iter_from("z")] == [1, 2, 3, 4, 5]
        with pytest.raises(InvalidState):
            ro.append_many([("z", 1.0, b"x", None)])


def test_closed_and_forked_stores_refuse_to_work(path: Path, monkeypatch) -> None:
    s = ReplayStore(path)
    monkeypatch.setattr(s, "_pid", -1)          # as if we were a forked child
    with pytest.raises(InvalidState, match="fork"):
        s.append_many([("z", 1.0, b"x", None)])
    with pytest.raises(InvalidState, match="fork"):
        list(s.iter_from("z"))
    monkeypatch.undo()
    s.close()
    s.close()                                     # idempotent
    with pytest.raises(InvalidState):
        s.stats()


def test_prune_stats_total() -> None:
    assert PruneStats({"a": 1}, {"b": 2}, {"c": 3}, 10).total == 6


def test_format_version_mismatch_is_reported(path: Path) -> None:
    make_log(path, 1)
    env = lmdb.open(str(path), max_dbs=K.MAX_DBS)
    meta = env.open_db(K.META_DB)
    with env.begin(write=True) as txn:
        txn.put(K.META_VERSION, K.U32.pack(99), db=meta)
    env.close()
    with pytest.raises(ReplayLogCorrupt, match="format version 99"):
        ReplayStore(path)


def test_log_messages_use_the_router_logger(path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="router.replaylog")
    s = ReplayStore(path, map_size=64 * KiB, max_map_size=1 * MiB)
    try:
        s.append_many([("z", 1.0, b"x" * 100 * KiB, None)])
    finally:
        s.close()
    assert any(r.name == "router.replaylog" and "grown" in r.getMessage()
               for r in caplog.records)


def test_flooding_zone_never_evicts_a_zone_within_its_share(path: Path) -> None:
    """Issue 16 S7: three zones share a cap of 30 records (10 each). Two quiet zones
    hold 4 and 9; one zone floods with 1 000: it keeps the rest of the cap and evicts
    only its own records, counted against it."""
    f = frame(0, 100)
    size = rec_size(f)
    s = ReplayStore(path, max_bytes=30 * size)
    try:
        s.append_many([("quiet1", float(t), f, None) for t in range(4)])
        s.append_many([("quiet2", float(t), f, None) for t in range(9)])
        for start in range(0, 1000, 50):
            s.append_many([("flood", 100.0 + t, f, None) for t in range(start, start + 50)])
        assert ts_of(s, "quiet1") == [0.0, 1.0, 2.0, 3.0]
        assert len(ts_of(s, "quiet2")) == 9
        flood = ts_of(s, "flood")
        assert len(flood) == 30 - 4 - 9 and flood[-1] == 1099.0    # the newest kept
        zones = s.stats()["zones"]
        assert zones["flood"]["evicted"] == 1000 - 17
        assert zones["quiet1"]["evicted"] == 0 and zones["quiet2"]["evicted"] == 0
        # A quiet zone over its share once the flood grows past it loses its own oldest.
        s.append_many([("quiet2", 50.0 + t, f, None) for t in range(10)])
        assert ts_of(s, "quiet1") == [0.0, 1.0, 2.0, 3.0]
        assert s.total_bytes <= 30 * size
        assert s.stats()["zones"]["quiet1"]["evicted"] == 0
    finally:
        s.close()
