"""A data file cut short inside the overflow pages of its last large value passes
open_checked's walk (it reads keys only), and the first read of that value kills the
process with SIGBUS: the crash at every start the short-file check was written against
(replaylog/lmdbfile.py _WALK iterates ``values=False``; before 4b3551f such a short file
was refused outright)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb

from replaylog import ReplayStore
from replaylog.lmdbfile import open_checked

P_OVERFLOW = 0x04


def _last_overflow_run(data: Path) -> tuple[int, int]:
    """(first page, page count) of the overflow run with the highest page number."""
    raw = data.read_bytes()
    psize = 4096
    pages = len(raw) // psize
    i, last = 2, None
    while i < pages:
        flags = struct.unpack_from("<H", raw, i * psize + 10)[0]
        if flags & P_OVERFLOW:
            n = struct.unpack_from("<I", raw, i * psize + 12)[0]
            last = (i, n)
            i += max(n, 1)
        else:
            i += 1
    assert last is not None, "no overflow page in the file"
    return last


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)


def test_open_checked_refuses_a_file_cut_inside_overflow_pages(tmp_path: Path) -> None:
    q = tmp_path / "q"
    env = lmdb.open(str(q), map_size=1 << 30, max_dbs=4, subdir=True)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        for i in range(20):
            txn.put(b"%08d" % i, b"s" * 100, db=db)
    with env.begin(write=True) as txn:
        txn.put(b"big", b"x" * 40000, db=db)       # a 10-page value: overflow pages
    env.close()
    data = q / "data.mdb"
    first, n = _last_overflow_run(data)
    os.truncate(data, (first + n // 2) * 4096)     # the second half of the value is gone

    opened, problem = open_checked(q, lambda: lmdb.open(str(q), map_size=1 << 30,
                                                        max_dbs=4, subdir=True))
    if opened is not None:
        opened.close()
    if problem is None:
        # What the caller then does: read the value (in a process of its own here).
        read = _run("""
            import lmdb, sys
            env = lmdb.open(sys.argv[1], map_size=1 << 30, max_dbs=4, subdir=True)
            with env.begin() as txn:
                print(len(txn.get(b"big", db=env.open_db(b"records", txn=txn))))
            """, str(q))
        raise AssertionError(
            f"open_checked accepted {data}, cut short inside the overflow pages of its "
            f"last value ({data.stat().st_size} bytes); reading that value then ends with "
            f"return code {read.returncode} (-7 = SIGBUS): the walker only iterates keys")


def test_a_replay_log_cut_inside_a_large_frame_is_refused_not_a_sigbus(tmp_path: Path
                                                                       ) -> None:
    log = tmp_path / "replaylog"
    store = ReplayStore(log)
    try:
        store.append_many([("A", 100.0 + i, b"f" * 300, None) for i in range(20)])
        # Check results with a long output, one per commit: their frames live in
        # overflow pages, the last ones at the end of the file.
        for k in range(4):
            store.append_many([("A", 200.0 + k, b"{" + b"o" * 30000 + b"}", None)])
    finally:
        store.close()
    data = log / "data.mdb"
    first, n = _last_overflow_run(data)
    assert (first + n) * 4096 == data.stat().st_size, "the file does not end in overflow pages"
    os.truncate(data, (first + n // 2) * 4096)   # only half of the last frame's pages lost

    # Opened and read as the node does at start and at a replay (in a process of its
    # own: it may die of SIGBUS).
    done = _run("""
        import sys
        from replaylog import ReplayStore, ReplayLogCorrupt
        try:
            store = ReplayStore(sys.argv[1])
        except ReplayLogCorrupt as e:
            print("refused:", e)
            raise SystemExit(0)
        print("opened")
        sys.stdout.flush()
        print(sum(len(r.frame) for r in store.read_batch("A")))
        store.close()
        """, str(log))
    assert done.returncode == 0 and "refused" in done.stdout, (
        f"a replay log cut short inside its last large frame ({data.stat().st_size} bytes) "
        f"was not refused as truncated: the process ended with return code "
        f"{done.returncode} (-7 = SIGBUS), output {done.stdout!r} {done.stderr[-300:]!r}")
