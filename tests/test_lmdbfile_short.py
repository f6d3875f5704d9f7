"""A data file may end before its last page number without damage (replaylog.lmdbfile).

LMDB does not write pages a transaction allocated and freed again: after a transaction
that appends and evicts, the file can be shorter than ``(last_pgno + 1) * psize``. The
size check added against truncated files refused such a clean writers' queue at the next
start (found by review: a reload's evictions, then a restart). A short file's trees are
walked in a process of its own instead; a file really cut short still fails."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from replaylog.lmdbfile import open_checked


def _short_env(path: Path) -> None:
    """An environment whose file ends before its last page, made the way the writers'
    queue makes one: big transactions that append and evict."""
    env = lmdb.open(str(path), map_size=1 << 30, max_dbs=4, subdir=True)
    db = env.open_db(b"records")
    n = low = 0
    try:
        for _ in range(200):
            with env.begin(write=True) as txn:
                for _ in range(1000):
                    txn.put(b"%016d" % n, b"y" * 1020, db=db)
                    n += 1
                while n - low > 1000:
                    txn.delete(b"%016d" % low, db=db)
                    low += 1
            needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
            if (path / "data.mdb").stat().st_size < needed:
                return
        raise AssertionError("LMDB wrote every page this time; no short file to test")
    finally:
        env.close()


def _problem(path: Path) -> str | None:
    env, problem = open_checked(path, lambda: lmdb.open(str(path), map_size=1 << 30,
                                                        max_dbs=4, subdir=True))
    if env is not None:
        env.close()
    return problem


def test_a_short_but_undamaged_file_is_not_refused(tmp_path: Path) -> None:
    _short_env(tmp_path / "q")
    assert _problem(tmp_path / "q") is None
    env = lmdb.open(str(tmp_path / "q"), map_size=1 << 30, max_dbs=4, subdir=True)
    try:
        db = env.open_db(b"records")
        with env.begin() as txn:
            assert sum(1 for _ in txn.cursor(db)) == 1000
    finally:
        env.close()


def test_a_file_cut_short_is_refused(tmp_path: Path) -> None:
    _short_env(tmp_path / "q")
    data = tmp_path / "q" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    problem = _problem(tmp_path / "q")
    assert problem is not None and "truncated" in problem, problem
