"""Tests of ``replaylog.writer.ReplayWriter``: group commit, flush, close, durability."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from replaylog import ReplayLogDiskFull, ReplayStore, ReplayWriter
from replaylog.errors import InvalidState

REPO = Path(__file__).resolve().parents[1]


def frame(n: int) -> bytes:
    body = b'{"jsonrpc":"2.0","method":"event::CheckResult","n":%d}' % n
    return b"%d:%b," % (len(body), body)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "replaylog"


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def blocker(writer: ReplayWriter) -> threading.Event:
    """Park the writer thread in an op until the returned event is set."""
    release = threading.Event()
    parked = threading.Event()

    def park() -> None:
        parked.set()
        release.wait(30)
    writer.call(park)
    assert parked.wait(10)
    return release


def test_many_submits_make_few_transactions(path: Path) -> None:
    commits: list[tuple[int, int]] = []
    threads: set[str] = set()

    def on_commit(n: int, committed: int) -> None:
        commits.append((n, committed))
        threads.add(threading.current_thread().name)

    with ReplayWriter.open(path, batch_messages=100, batch_ms=10_000,
                           on_commit=on_commit) as w:
        for i in range(1000):
            assert w.submit("z", float(i), frame(i)) is True
        assert w.flush(10)
        assert w.committed_seq == w.submitted_seq == 1000 and w.pending == 0
        # Full batches commit without waiting for batch_ms; at most a few extra
        # transactions when the writer wakes up behind.
        assert sum(n for n, _ in commits) == 1000
        assert 1 <= len(commits) <= 11, commits
        assert all(n >= 100 for n, _ in commits[:-1])
        assert [c for _, c in commits] == sorted(c for _, c in commits)
        assert threads == {"replaylog-writer"}
        assert w.commits == len(commits)
        assert [r.seq for r in w.store.iter_from("z")] == list(range(1, 1001))


def test_a_lone_record_is_committed_after_batch_ms(path: Path) -> None:
    commits: list[int] = []
    with ReplayWriter.open(path, batch_messages=1000, batch_ms=200,
                           on_commit=lambda n, c: commits.append(n)) as w:
        start = time.monotonic()
        for i in range(5):
            w.submit("z", float(i), frame(i))
        assert wait_until(lambda: w.committed_seq == 5)
        assert time.monotonic() - start >= 0.19
        assert sum(commits) == 5 and len(commits) <= 2   # one, unless descheduled


def test_flush_waits_for_what_was_submitted_before(path: Path) -> None:
    with ReplayWriter.open(path, batch_messages=10_000, batch_ms=60_000) as w:
        assert w.flush(0) is True          # nothing pending
        for i in range(10):
            w.submit("z", float(i), frame(i))
        start = time.monotonic()
        assert w.flush(10) is True         # does not wait for batch_ms
        assert time.monotonic() - start < 5
        assert w.store.stats()["records"] == 10

        release = blocker(w)
        w.submit("z", 10.0, frame(10))
        assert w.flush(0.05) is False      # the writer is busy: timeout
        assert w.pending == 1
        release.set()
        assert w.flush(10) is True and w.pending == 0


def test_close_flushes_everything(path: Path) -> None:
    w = ReplayWriter.open(path, batch_messages=10_000, batch_ms=60_000, sync=False)
    for i in range(2500):
        w.submit(f"zone-{i % 3}", float(i), frame(i), "obj" if i % 2 else None)
    assert w.close(30) is True
    assert w.store.closed
    assert w.close() is True               # idempotent
    assert w.submit("z", 1.0, b"x") is False and w.dropped == 1
    with pytest.raises(InvalidState):
        w.call(print)
    with ReplayStore(path) as s:
        assert s.stats()["records"] == 2500
        got = sorted((r.ts, r.frame, r.object_zone) for z in ("zone-0", "zone-1", "zone-2")
                     for r in s.iter_from(z))
        assert got == [(float(i), frame(i), "obj" if i % 2 else None) for i in range(2500)]


def test_operations_run_in_order_after_earlier_records(path: Path) -> None:
    with ReplayWriter.open(path, batch_messages=10_000, batch_ms=60_000) as w:
        for i in range(1, 51):
            w.submit("z", float(i), frame(i))
        seen = w.call(lambda: w.store.stats()["records"])
        assert seen.result(10) == 50       # committed before the op ran
        assert w.confirm("ep", 20.0).result(10) == 20.0
        stats = w.prune(100.0, {"z": ["ep"]}, {}).result(10)
        assert stats.confirmed == {"z": 20}
        assert w.enforce_cap(0).result(10) == {"z": 30}
        failing = w.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(10)
        w.submit("z", 60.0, frame(60))     # the writer survived the failing op
        assert w.flush(10)


def test_the_loop_can_flush_without_blocking(path: Path, run) -> None:
    with ReplayWriter.open(path, batch_messages=10_000, batch_ms=60_000) as w:
        async def main() -> bool:
            for i in range(100):
                w.submit("z", float(i), frame(i))
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)
            task = asyncio.create_task(ticker())
            ok = await w.aflush(timeout=10)
            task.cancel()
            return ok and ticks > 0
        assert run(main())
        assert w.committed_seq == 100


def test_a_backlog_is_bounded_and_refusals_are_counted(path: Path, caplog) -> None:
    with ReplayWriter.open(path, batch_messages=10, batch_ms=1,
                           max_pending_bytes=10 * len(frame(0))) as w:
        release = blocker(w)
        accepted = [w.submit("z", float(i), frame(i)) for i in range(25)]
        assert accepted == [True] * 10 + [False] * 15
        assert w.dropped == 15 and w.pending == 10
        release.set()
        assert w.flush(10)
        assert w.submit("z", 99.0, frame(99)) is True
        assert w.flush(10)
    refusals = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert len(refusals) == 1
    with ReplayStore(path) as s:
        assert s.stats()["records"] == 11


def test_storage_failures_are_counted_and_the_writer_goes_on(path: Path, monkeypatch,
                                                             caplog) -> None:
    committed: list[int] = []
    with ReplayWriter.open(path, batch_ms=1, on_commit=lambda n, c: committed.append(n)) as w:
        real = w.store.append_many
        fail = threading.Event()
        fail.set()

        def append_many(records):
            if fail.is_set():
                raise ReplayLogDiskFull("disk full (test)")
            return real(records)
        monkeypatch.setattr(w.store, "append_many", append_many)
        w.submit("z", 1.0, frame(1))
        assert w.flush(10) is True          # done, but not stored
        assert w.failed == 1 and committed == []
        fail.clear()
        w.submit("z", 2.0, frame(2))
        assert w.flush(10) and w.failed == 1 and committed == [1]
        assert [r.ts for r in w.store.iter_from("z")] == [2.0]
    assert any("not stored" in r.getMessage() for r in caplog.records)


def test_on_commit_errors_do_not_stop_the_writer(path: Path, caplog) -> None:
    def boom(n: int, c: int) -> None:
        raise RuntimeError("callback bug")
    with ReplayWriter.open(path, batch_ms=1, on_commit=boom) as w:
        for i in range(3):
            w.submit("z", float(i), frame(i))
            assert w.flush(10)
        assert w.committed_seq == 3 and w.stats()["alive"]
    assert any("on_commit" in r.getMessage() for r in caplog.records)


def test_flush_from_the_writer_thread_is_refused(path: Path) -> None:
    with ReplayWriter.open(path) as w:
        fut = w.call(w.flush)
        with pytest.raises(InvalidState):
            fut.result(10)


def test_bad_zone_names_are_refused_at_submit(path: Path) -> None:
    with ReplayWriter.open(path) as w:
        with pytest.raises(ValueError):
            w.submit("", 1.0, b"x")
        with pytest.raises(ValueError):
            w.submit("z", 1.0, b"x", "o" * 600)
        assert w.submitted_seq == 0


def test_replay_reads_while_the_writer_writes(path: Path) -> None:
    with ReplayWriter.open(path, batch_messages=50, batch_ms=1) as w:
        done = threading.Event()
        errors: list[BaseException] = []

        def replay() -> None:
            try:
                last = 0
                while not done.is_set() or last < 3000:
                    for r in w.store.iter_from("z", after_ts=float(last), chunk=64):
                        assert r.seq == last + 1 and r.frame == frame(last + 1)
                        last = r.seq
            except BaseException as e:
                errors.append(e)
        t = threading.Thread(target=replay)
        t.start()
        for i in range(1, 3001):
            w.submit("z", float(i), frame(i))
        assert w.flush(30)
        done.set()
        t.join(30)
        assert not errors, errors


# -- durability across kill -9 -------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from replaylog import ReplayWriter

    def frame(n):
        body = b'{"jsonrpc":"2.0","method":"event::CheckResult","n":%d}' % n
        return b"%d:%b," % (len(body), body)

    path, n = sys.argv[1], int(sys.argv[2])
    w = ReplayWriter.open(path, batch_messages=100, batch_ms=5)
    for i in range(n):
        w.submit("agent-1", float(i), frame(i), "agent-1" if i % 2 else None)
    assert w.flush(60)
    print(w.committed_seq, flush=True)
    i = n
    while True:                      # keep writing until SIGKILL
        w.submit("agent-1", float(i), frame(i), "agent-1" if i % 2 else None)
        i += 1
        if i % 200 == 0:
            time.sleep(0.0005)
""")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_flushed_records_survive_kill_9(path: Path, delay: float) -> None:
    n = 5000
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             cwd=REPO)
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read().decode()
        flushed = int(line)
        assert flushed == n
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    with ReplayStore(path) as s:       # opens cleanly: nothing corrupt
        records = list(s.iter_from("agent-1"))
        stats = s.stats()
    # Everything up to the flush point, exactly once and in order, then a clean prefix
    # of what followed (whole batches only).
    assert len(records) >= flushed
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert [r.ts for r in records] == [float(i) for i in range(len(records))]
    assert all(r.frame == frame(i) for i, r in enumerate(records))
    assert all(r.object_zone == ("agent-1" if i % 2 else None) for i, r in enumerate(records))
    assert stats["records"] == len(records)
    assert stats["zones"]["agent-1"]["last_seq"] == len(records)
    logging.getLogger(__name__).info("kill -9 after %.2fs: %d flushed, %d on disk",
                                     delay, flushed, len(records))


def test_pending_is_counted_per_zone_until_committed(tmp_path) -> None:
    with ReplayWriter.open(tmp_path / "rl", batch_messages=10_000, batch_ms=60_000) as w:
        for i in range(3):
            assert w.submit("master", 10.0 + i, b"2:{},", None)
        assert w.submit("agent", 20.0, b"2:{},", None)
        assert (w.pending_in("master"), w.pending_in("agent"), w.pending_in("x")) == (3, 1, 0)
        assert w.flush(10)
        assert (w.pending_in("master"), w.pending_in("agent"), w.pending) == (0, 0, 0)
