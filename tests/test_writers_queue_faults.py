"""The writers' queue after faults found by review: a writers' process killed inside a
read transaction, a bound raised by a reload beyond the map, a PostgreSQL position from
another queue (a restored data directory), a runner restarted after a crash between a
backend's commit and the queue's confirmation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import orjson

from router.config import WriterSpec
from router.features.writers.base import WriterBackendError
from router.features.writers import queue as queue_module
from router.features.writers.feed import ResultFeed
from router.features.writers.queue import SharedQueue, WriterQueue
from router.features.writers.runner import WriterRunner, ZoneView
from tests.test_writers_queue import ScriptedBackend

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
MESSAGE = orjson.dumps({"method": "event::CheckResult", "params": {"host": "h"}})


def _filled(tmp_path: Path, name: str, count: int, appended_at: float | None = None
            ) -> tuple[SharedQueue, WriterQueue]:
    """A shared queue with one writer ``name`` and ``count`` results for it."""
    shared = SharedQueue(tmp_path / "q")
    reader = shared.reader(name)
    shared.append_many([(appended_at or time.time(), MESSAGE)] * count, {})
    return shared, reader


class StoresPosition(ScriptedBackend):
    """Keeps the position of the last batch it took, as PostgreSQL does (each test resets
    ``stored`` first)."""

    stored: int | None = None

    async def write(self, batch) -> None:
        await super().write(batch)
        StoresPosition.stored = batch[-1][0]

    async def committed_position(self):
        return StoresPosition.stored


async def _stop_when_drained(task: asyncio.Task, queue: SharedQueue, name: str,
                             seconds: float) -> None:
    """Wait until ``name``'s backlog is empty (at most ``seconds``), then cancel ``task``."""
    deadline = time.monotonic() + seconds
    while queue.stats(name).backlog and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _run_until_drained(runner: WriterRunner, queue: SharedQueue, name: str,
                       seconds: float) -> None:
    """Run ``runner`` until ``name``'s backlog is empty (at most ``seconds``), then stop it."""
    async def main() -> None:
        await _stop_when_drained(asyncio.create_task(runner.run()), queue, name, seconds)
    asyncio.run(main())


def _open_in_a_process(path: Path, then: str) -> int:
    """Open the queue in another process (as the writers' process does), then ``then``."""
    code = textwrap.dedent(f"""
        import os, signal
        from router.features.writers.queue import SharedQueue, WriterQueue
        q = SharedQueue({str(path)!r})
        {then}
        """)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode


def test_a_reader_killed_inside_a_read_does_not_pin_the_queue_for_good(tmp_path: Path) -> None:
    path = tmp_path / "q"
    node = SharedQueue(path)                      # the node keeps it open throughout
    node.register("w")
    # The writers' process, killed (-9) while it is inside a read transaction ...
    rc = _open_in_a_process(path, "t = q._env.begin(); t.get(b'head', db=q._meta); "
                                  "os.kill(os.getpid(), signal.SIGKILL)")
    assert rc == -9
    # ... and started again (its open clears the dead reader's slot).
    assert _open_in_a_process(path, "q.close()") == 0
    record = b"x" * 50_000
    for _ in range(800):                          # 40 MB through a 1 MiB bound
        node.append_many([(time.time(), record)], {"w": MiB})
    size = (path / "data.mdb").stat().st_size
    node.close()
    # With the dead reader's snapshot pinned, no freed page is reused: ~40 MB.
    assert size < 8 * MiB, f"data.mdb grew to {size / MiB:.0f} MiB"


def test_a_bound_raised_beyond_the_map_is_capped_until_a_restart(tmp_path: Path, monkeypatch,
                                                                 caplog) -> None:
    monkeypatch.setattr(queue_module, "MIN_MAP_SIZE", 0)     # a 67 MiB map for 1 MiB bounds
    # One commit round takes what waits, up to max_pending_bytes: 64 MiB by default,
    # which fits a real map (at least 4 GiB) many times but not this test's 67 MiB one
    # (it failed when the feed thread fell behind on a busy machine).
    feed = ResultFeed(str(tmp_path), [WriterSpec("w", "graphite", max_backlog_bytes=MiB)],
                      batch_seconds=0, max_pending_bytes=8 * MiB)
    try:
        with caplog.at_level(logging.WARNING, logger="router.writers"):
            feed.reconfigure([WriterSpec("w", "graphite", max_backlog_bytes=200 * MiB)])
            assert feed.flush(10)
        assert any("until the node restarts" in r.getMessage() for r in caplog.records)
        for _ in range(1500):                     # 150 MB: twice what the map holds
            while not feed.submit(b"x" * 100_000):
                feed.flush(10)
        assert feed.flush(30)
        assert feed.failed == {}, feed.failed     # every append committed ...
        assert feed.evicted["w"] > 0              # ... the oldest evicted, counted
    finally:
        feed.close()


def test_a_stored_position_beyond_the_queue_is_not_taken(tmp_path: Path, caplog) -> None:
    StoresPosition.stored = None
    spec = WriterSpec("pg", "postgresql", flush_interval=0.01, flush_threshold=10, timeout=2)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    message = orjson.dumps({"method": "event::CheckResult", "params": {"host": "h"}})

    def drain(queue: SharedQueue, seconds: float) -> WriterRunner:
        runner = WriterRunner(spec, queue.reader("pg"), "n", ZoneView("n", ("n",)), pool,
                              factory=StoresPosition)
        _run_until_drained(runner, queue, "pg", seconds)
        return runner

    q = SharedQueue(tmp_path / "q")
    q.register("pg")
    q.append_many([(time.time(), message)] * 5, {})
    q.close()
    shutil.copytree(tmp_path / "q", tmp_path / "backup")       # DATA_DIR backed up here
    q = SharedQueue(tmp_path / "q")
    q.append_many([(time.time(), message)] * 45, {})
    assert len(drain(q, 10).backend.written) == 50              # the database has 50 ...
    q.close()
    shutil.rmtree(tmp_path / "q")                               # ... the backup comes back
    shutil.copytree(tmp_path / "backup", tmp_path / "q")
    q = SharedQueue(tmp_path / "q")
    q.append_many([(time.time(), message)] * 30, {})
    with caplog.at_level(logging.WARNING, logger="router.writers"):
        runner = drain(q, 10)
    # Every record of the restored queue is written (its 5 and the 30 new ones), none
    # passed unwritten and uncounted because the database held a position beyond it.
    assert len(runner.backend.written) == 35
    assert q.stats("pg").backlog == 0
    assert any("beyond this queue's newest" in r.getMessage() for r in caplog.records)
    q.close()


def test_a_runner_restarted_after_a_crash_resumes_at_the_stored_position(tmp_path: Path
                                                                          ) -> None:
    StoresPosition.stored = None
    spec = WriterSpec("pg", "postgresql", flush_interval=0.01, flush_threshold=10, timeout=2)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    shared, reader = _filled(tmp_path, "pg", 10)
    confirm = reader.confirm
    crashes = []

    def confirm_once_broken(upto: int) -> int:
        if not crashes:
            crashes.append(upto)
            raise RuntimeError("the queue's disk went away")   # after the backend took it
        return confirm(upto)
    reader.confirm = confirm_once_broken                        # type: ignore[method-assign]
    runner = WriterRunner(spec, reader, "n", ZoneView("n", ("n",)), pool,
                          factory=StoresPosition)

    async def main() -> None:
        first = asyncio.create_task(runner.run())
        await asyncio.wait_for(asyncio.shield(asyncio.gather(first, return_exceptions=True)),
                               10)
        second = asyncio.create_task(runner.run())              # as check_tasks does
        await _stop_when_drained(second, shared, "pg", 10)
    asyncio.run(main())
    assert crashes
    assert len(runner.backend.written) == 10, runner.backend.written   # each once
    assert shared.stats("pg").backlog == 0
    shared.close()


def test_results_appended_before_a_clock_step_back_are_not_held(tmp_path: Path) -> None:
    spec = WriterSpec("g", "graphite", flush_interval=0.2, flush_threshold=100, timeout=2)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    # appended an hour "ahead": the clock stepped back an hour since
    shared, reader = _filled(tmp_path, "g", 5, appended_at=time.time() + 3600)
    runner = WriterRunner(spec, reader, "n", ZoneView("n", ("n",)), pool,
                          factory=ScriptedBackend)
    _run_until_drained(runner, shared, "g", 5)
    assert len(runner.backend.written) == 5     # a partial batch, flushed after flush_interval
    shared.close()


class HeldOnce(ScriptedBackend):
    """Holds its first batch until the test releases it (a slow backend)."""

    release: asyncio.Event
    holding: asyncio.Event

    async def write(self, batch) -> None:
        if not self.written:
            HeldOnce.holding.set()
            await HeldOnce.release.wait()
        await super().write(batch)


def test_records_evicted_while_their_batch_is_written_are_not_counted_twice(
        tmp_path: Path) -> None:
    """The node's byte bound evicts the oldest records of a batch the runner is writing:
    each record is counted once, as evicted or as written, never as both (review)."""
    spec = WriterSpec("g", "graphite", flush_interval=0.01, flush_threshold=10, timeout=5)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    shared, reader = _filled(tmp_path, "g", 10)
    size = len(MESSAGE) + 8
    runner = WriterRunner(spec, reader, "n", ZoneView("n", ("n",)), pool, factory=HeldOnce)

    async def main() -> None:
        HeldOnce.release, HeldOnce.holding = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(HeldOnce.holding.wait(), 5)     # the batch of 10 is out
        # Four more arrive over a bound of ten records: the oldest four are evicted.
        _, evicted = shared.append_many([(time.time(), MESSAGE)] * 4, {"g": 10 * size})
        assert evicted == {"g": 4}
        HeldOnce.release.set()
        await _stop_when_drained(task, shared, "g", 5)
    asyncio.run(main())
    stats = shared.stats("g")
    assert stats.backlog == 0 and stats.evicted == 4
    assert len(runner.backend.written) == 14           # the backend did get all of them
    assert runner.written + stats.evicted == 14, (runner.written, stats.evicted)
    shared.close()


def test_a_queue_error_is_counted_and_retried_without_ending_the_writer(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """An LMDB error reading the queue (a disk error) is a counted ``queue`` error and a
    retry after a backoff, with the backend left connected; it used to end the writer's
    task (restarted a second later by ``check_tasks``, which counted nothing)."""
    monkeypatch.setattr("router.features.writers.runner.BACKOFF_MIN", 0.01)
    spec = WriterSpec("g", "graphite", flush_interval=0.01, flush_threshold=10, timeout=2)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    shared, reader = _filled(tmp_path, "g", 5)
    real_read = queue_module.read_records
    failures: list[int] = []

    def read_failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise lmdb.DiskError("Input/output error")
        return real_read(*args, **kwargs)
    monkeypatch.setattr(queue_module, "read_records", read_failing_once)
    runner = WriterRunner(spec, reader, "n", ZoneView("n", ("n",)), pool,
                          factory=ScriptedBackend)
    with caplog.at_level(logging.WARNING, "router.writers"):
        _run_until_drained(runner, shared, "g", 5)
    assert failures
    assert runner.errors == {"queue": 1}
    assert runner.backend.opens == 1                   # not reconnected for a queue error
    assert len(runner.backend.written) == 5
    assert any("writer g (graphite): writer queue" in r.getMessage() for r in caplog.records)
    shared.close()


class AlwaysFails(ScriptedBackend):
    """Connects fine, refuses every batch (a persistent error on a healthy connection)."""

    async def write(self, batch) -> None:
        raise WriterBackendError("database", "refused again")


def test_a_batch_that_always_fails_is_retried_with_a_growing_backoff(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """The successful reconnect after each failure reset the backoff, so a batch that
    failed every time was retried every half second for good (review)."""
    monkeypatch.setattr("router.features.writers.runner.BACKOFF_MIN", 0.1)
    spec = WriterSpec("pg", "postgresql", flush_interval=0.01, flush_threshold=10, timeout=2)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    shared, reader = _filled(tmp_path, "pg", 3)
    runner = WriterRunner(spec, reader, "n", ZoneView("n", ("n",)), pool, factory=AlwaysFails)

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(3.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    # 0.1 s doubling, jitter 0.5-1: the 7th failure comes 0.05 + 0.1 + ... + 1.6 = 3.15 s
    # after the first at the soonest, the 8th after 6.35 s; reset on each connect, 30 or
    # more failures came in 3.5 s.
    assert 2 <= runner.errors["database"] <= 7, runner.errors
    shared.close()
