"""``replaylog.ReceivedPositions``: the processed positions on disk (issue 21)."""

from __future__ import annotations

import math
from pathlib import Path

import lmdb
import pytest

from replaylog import ReceivedPositions, ReplayLogError
from replaylog.received import RECENT_PREFIX


def test_positions_survive_reopening_and_only_move_forward(tmp_path: Path) -> None:
    path = tmp_path / "received"
    with ReceivedPositions(path) as store:
        assert store.load() == {}
        assert store.save({"agent1": 10.5, "sat1": 3.0}) == 2
        assert store.save({"agent1": 9.0, "sat1": 4.0, "ünïcode": 1.0}) == 2
        assert store.save({"agent1": math.nan}) == 0
    with ReceivedPositions(path, readonly=True) as store:
        assert store.load() == {"agent1": 10.5, "sat1": 4.0, "ünïcode": 1.0}


def test_names_that_cannot_be_keys_are_skipped(tmp_path: Path) -> None:
    with ReceivedPositions(tmp_path / "received") as store:
        assert store.save({"": 1.0, "x" * 600: 2.0, "ok": 3.0}) == 1
        assert store.load() == {"ok": 3.0}


def test_a_damaged_entry_is_skipped_and_the_rest_loaded(tmp_path: Path) -> None:
    path = tmp_path / "received"
    with ReceivedPositions(path) as store:
        store.save({"good": 5.0})
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"bad", b"\x00\x01")          # not 8 bytes
    env.close()
    with ReceivedPositions(path) as store:
        assert store.load() == {"good": 5.0}


def test_closed_store_refuses(tmp_path: Path) -> None:
    store = ReceivedPositions(tmp_path / "received")
    store.close()
    store.close()
    with pytest.raises(ReplayLogError):
        store.save({"a": 1.0})


def test_a_corrupt_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "received"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    with pytest.raises(ReplayLogError, match="move the directory"):
        ReceivedPositions(path)


def test_recent_stamps_survive_reopening_oldest_dropped_past_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "received"
    first = [("agent1", 1.0, "sat1"), ("agent2", 3.0, "sat1"), ("agent1", 2.0, "sat1")]
    with ReceivedPositions(path) as store:
        store.save({"sat1": 3.0}, first, 4)
        store.save({}, [("agent1", 0.5, "master2")], 4)
        assert store.load_recent() == first + [("agent1", 0.5, "master2")]
    with ReceivedPositions(path) as store:      # the index is read back from the file
        store.save({}, [("agent3", 4.0, "sat1"), ("agent3", 5.0, "sat1"),
                        ("agent3", 6.0, "sat1")], 4)
        # the first save's three stamps go: the two newer saves hold 4 (the bound)
        assert store.load_recent() == [("agent1", 0.5, "master2"), ("agent3", 4.0, "sat1"),
                                       ("agent3", 5.0, "sat1"), ("agent3", 6.0, "sat1")]
        assert store.load() == {"sat1": 3.0}    # positions never see the stamps' keys
    with ReceivedPositions(path, readonly=True) as store:
        assert len(store.load_recent()) == 4


def test_one_save_over_the_bound_keeps_its_newest_stamps(tmp_path: Path) -> None:
    with ReceivedPositions(tmp_path / "received") as store:
        store.save({}, [("a", 1.0, "sat1"), ("a", 2.0, "m2"), ("b", 4.0, "sat1"),
                        ("a", 3.0, "m2"), ("b", 5.0, "sat1")], 3)
        assert store.load_recent() == [("b", 4.0, "sat1"), ("a", 3.0, "m2"),
                                       ("b", 5.0, "sat1")]


def test_damaged_recent_stamps_are_skipped_and_the_rest_loaded(tmp_path: Path) -> None:
    path = tmp_path / "received"
    with ReceivedPositions(path) as store:
        store.save({"good": 5.0}, [("agent1", 1.0, "sat1")], 10)
        store.save({}, [("agent2", 2.0, "sat1")], 10)
        store.save({}, [("agent3", 3.0, "sat1")], 10)
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        assert cursor.set_range(RECENT_PREFIX)
        key, value = bytes(cursor.key()), bytes(cursor.value())
        txn.put(key, value[:-3])                # the first value cut short
        assert cursor.next()
        key, value = bytes(cursor.key()), bytes(cursor.value())
        txn.put(key, b"\x00" * 4 + value[4:])   # the second says 0 stamps, holds one
    env.close()
    with ReceivedPositions(path) as store:
        assert store.load_recent() == [("agent3", 3.0, "sat1")]
        assert store.load() == {"good": 5.0}


def test_a_failed_save_leaves_the_bound_in_force(tmp_path: Path) -> None:
    """A transaction that fails after the old values were deleted in it rolls the
    deletes back: the next save deletes them (the index followed the transaction before
    it committed, and they stayed on disk for good: review)."""
    class Failing(dict):
        def items(self):
            raise lmdb.MapFullError("full")

    with ReceivedPositions(tmp_path / "received") as store:
        store.save({}, [("a", 1.0, "h"), ("a", 2.0, "h")], 2)
        with pytest.raises(lmdb.MapFullError):
            store.save(Failing(), [("a", 3.0, "h"), ("a", 4.0, "h")], 2)
        store.save({}, [("a", 8.0, "h"), ("a", 9.0, "h")], 2)
        assert [ts for _, ts, _ in store.load_recent()] == [8.0, 9.0]
