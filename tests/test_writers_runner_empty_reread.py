"""The runner waits for a partial batch to fill (``flush_interval``), then reads it again
(runner.py ``_step``). If the second read comes back empty, ``_write([])`` takes
``records[-1]`` (runner.py ``_write``) and the runner's task dies of an IndexError.

The second read is empty whenever the writer's records went away during the wait: the
node's feed applied a reload that removed the writer (``retain`` forgets its position;
the writers' process stops the runner only when it handles its own configure message,
later), or a single result larger than ``max_backlog_bytes`` made the node's byte bound
pass every record of the writer. The writers' process then logs "writer ... crashed"
with a traceback and restarts the runner a second later."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import orjson

from router.config import WriterSpec
from router.features.writers.queue import SharedQueue
from router.features.writers.runner import WriterRunner, ZoneView
from tests.test_writers_queue import ScriptedBackend

MESSAGE = orjson.dumps({"method": "event::CheckResult", "params": {"host": "h"}})


class ReloadDuringTheWait:
    """The runner's queue; the node applies a reload removing the writer between the
    runner's first read of a partial batch and its read after the wait."""

    def __init__(self, shared: SharedQueue, name: str) -> None:
        self.shared, self.inner, self.reads = shared, shared.reader(name), 0

    def read(self, after, limit):
        self.reads += 1
        if self.reads == 2:
            self.shared.retain(set())          # ResultFeed._open after the reload
        return self.inner.read(after, limit)

    def confirm(self, upto):
        return self.inner.confirm(upto)

    def evict_older(self, cutoff):
        return self.inner.evict_older(cutoff)

    def stats(self):
        return self.inner.stats()


def test_an_empty_read_after_the_partial_batch_wait_does_not_crash_the_runner(tmp_path):
    shared = SharedQueue(tmp_path / "q")
    queue = ReloadDuringTheWait(shared, "w")
    # One result, appended 0.95 s ago: the runner waits the remaining 50 ms, reads again.
    shared.append_many([(time.time() - 0.95, MESSAGE)], {})
    spec = WriterSpec("w", "graphite", flush_interval=1.0, flush_threshold=100, timeout=2)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    runner = WriterRunner(spec, queue, "n", ZoneView("n", ("n",)), pool,
                          factory=ScriptedBackend)

    async def main() -> BaseException | None:
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(1.0)
        crashed = task.exception() if task.done() and not task.cancelled() else None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return crashed
    try:
        crashed = asyncio.run(main())
    finally:
        shared.close()
        pool.shutdown()
    assert queue.reads >= 2, "the runner never read the batch again after its wait"
    assert crashed is None, (
        f"the runner's task died of {crashed!r}: the read after the partial-batch wait "
        "came back empty and _write([]) indexed records[-1]")
