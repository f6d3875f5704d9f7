"""The writers' process: ``python -m router.features.writers.child``, started by the node.

Why a process: a slow or dead backend, a large batch being formatted, an fsync of the
queue must cost the routing event loop nothing (issue 19). The node starts this process
with pipes; the protocol is JSON lines:

* node -> child (stdin): ``{"op": "configure", "node_name", "data_dir", "log_level",
  "zone_endpoints": [...], "writers": [WriterSpec as JSON]}`` (at start and on every
  reload: writers added, removed or changed are started, stopped or restarted) and
  ``{"op": "peers", "connected": [...]}`` (the node's connected set, for HA).
* child -> node (stdout): ``{"op": "stats", "writers": {name: runner stats}}`` twice a
  second.
* child -> node (stderr): each log record as ``{"level", "logger", "message",
  "exception"?}``; the node logs it again through its own logging, so the writers' lines
  come out in the node's format (``[node] log_format``, text or JSON) with its repeat
  filter, in one stream (``service.relay_log_line``).

End of stdin (the node stopped, or was killed) stops the process: nothing here outlives
the node, and the durable queues keep what was not written yet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from router.config import WriterSpec
from router.features.writers.base import WriterBackendError
from router.features.writers.legacy import DrainingQueue, LegacyQueue, open_shared_queue
from router.features.writers.queue import REOPEN, QueueReader, SharedQueue, WriterQueue
from router.features.writers.records import RecordCache
from router.features.writers.runner import WriterRunner, ZoneView
from router.features.writers.spec import spec_from_json

__all__ = ["GC_THRESHOLDS", "WritersProcess", "main", "tune_gc"]

log = logging.getLogger("router.writers")
STATS_INTERVAL = 0.5


class WritersProcess:
    """All runners of this node, and the control/stats pipe."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._runners: dict[str, tuple[WriterSpec, WriterRunner, asyncio.Task[None]]] = {}
        self._shared: SharedQueue | None = None
        self._queues: dict[str, QueueReader] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(4, "writers-io")
        self._view: ZoneView | None = None
        self._failed: dict[str, str] = {}
        self._last_configure: dict[str, Any] | None = None
        self._retry_attempts = 0
        self._retry_at = 0.0
        #: Decoded records shared by all runners: each record is decoded and its
        #: perfdata parsed once, not once per writer (``records.py``).
        self._records = RecordCache()

    async def configure(self, msg: dict[str, Any]) -> None:
        self._last_configure = msg
        node_name = str(msg["node_name"])
        zone = tuple(str(e) for e in msg.get("zone_endpoints", ()))
        if self._view is None:
            self._view = ZoneView(node_name, zone)
        else:
            self._view.update(zone, self._view.connected_peers())
        specs = {s.name: s for s in (spec_from_json(d) for d in msg.get("writers", ()))}
        # Room for two batches of every writer: runners that keep up read the same
        # records within a batch or two of each other.
        self._records.limit = max(2048, 2 * sum(s.flush_threshold for s in specs.values()))
        for name in list(self._runners):
            old = self._runners[name][0]
            if specs.get(name) != old:
                await self._stop(name)
                if name not in specs:
                    self._close_queue(name)
                    log.info("writer %s stopped (removed from the configuration)", name)
        for name, spec in specs.items():
            if name in self._runners:
                continue
            try:
                queue = self._queues.get(name)
                if queue is None:
                    queue = self._open_queue(str(msg["data_dir"]), spec, specs.values())
                    self._queues[name] = queue
                runner = WriterRunner(spec, queue, node_name, self._view, self._executor,
                                      records=self._records)
            except (WriterBackendError, ImportError, KeyError) as e:
                if self._failed.get(name) != str(e):    # once per reason, not every retry
                    log.error("writer %s (%s) cannot start: %s", name, spec.type, e)
                self._failed[name] = str(e)
                continue
            self._failed.pop(name, None)
            task = asyncio.create_task(runner.run(), name=f"writer-{name}")
            self._runners[name] = (spec, runner, task)
            log.info("writer %s (%s) started, %d results queued", name, spec.type,
                     runner.queue_stats.backlog)

    def _open_queue(self, data_dir: str, spec: WriterSpec,
                    specs: Iterable[WriterSpec]) -> QueueReader:
        """``spec``'s reader of the shared queue, behind its old per-writer queue while
        that still holds records (``legacy.py``). Only the node's feed registers and
        forgets writers: this process reads reloads seconds late, and registering here
        brought back a writer a later reload had removed, whose position then held every
        record for good (review). Until the feed registers it, it reads nothing."""
        if self._shared is None:
            self._shared = open_shared_queue(data_dir,
                                             max(s.max_backlog_bytes for s in specs))
        reader = WriterQueue(self._shared, spec.name)
        old = LegacyQueue.open_if_present(data_dir, spec.name, spec.max_backlog_bytes)
        if old is None:
            return reader
        log.info("writer %s: delivering its old queue %s first (%d results)", spec.name,
                 old.path, old.stats().backlog)
        return DrainingQueue(old, reader)

    def _close_queue(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if isinstance(queue, DrainingQueue):
            queue.close()

    async def _stop(self, name: str) -> WriterRunner:
        _, runner, task = self._runners.pop(name)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:                   # noqa: BLE001 - logged, the others go on
            log.exception("writer %s failed while stopping", name)
        return runner

    def peers(self, msg: dict[str, Any]) -> None:
        if self._view is not None:
            connected = frozenset(str(e) for e in msg.get("connected", ()))
            self._view.update(self._view.zone_endpoints, connected)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (_, runner, task) in self._runners.items():
            s = runner.stats()
            if task.done() and not task.cancelled() and task.exception() is not None:
                s["last_error"] = f"crashed: {task.exception()!r}"
            out[name] = s
        for name, error in self._failed.items():
            out[name] = {"last_error": error, "connected": False, "active": False}
        return out

    def send_stats(self, stats: dict[str, Any] | None = None) -> None:
        try:
            self._out.write(orjson.dumps({"op": "stats",
                                          "writers": self.stats() if stats is None else stats})
                            + b"\n")
            self._out.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass                                # the node is gone: nobody to tell

    async def stop(self) -> None:
        final = {}
        for name in list(self._runners):
            final[name] = (await self._stop(name)).stats()
        self.send_stats(final)
        self._executor.shutdown(wait=True)
        for name in list(self._queues):
            self._close_queue(name)
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    async def retry_failed(self, now: float) -> None:
        """Start again the writers that could not start (their queue could not be
        opened), after ``queue.REOPEN``'s doubling delay."""
        if not self._failed or self._last_configure is None or now < self._retry_at:
            return
        await self.configure(self._last_configure)
        if self._failed:
            self._retry_at = now + REOPEN.cap(self._retry_attempts)
            self._retry_attempts += 1
        else:
            self._retry_attempts = 0

    async def check_tasks(self) -> None:
        """Restart a runner whose task died of a bug (logged), so one writer's crash
        does not stop it forever."""
        for name, entry in list(self._runners.items()):
            spec, runner, task = entry
            if task.done():
                exc = None if task.cancelled() else task.exception()
                log.error("writer %s crashed: %r; restarting it", name, exc)
                await asyncio.sleep(1)
                # A reload (configure) may have removed or replaced the writer during
                # the pause: restarting the old one then ran a removed writer again, or
                # two runners of one writer (review).
                if self._runners.get(name) is not entry:
                    continue
                self._runners[name] = (spec, runner,
                                       asyncio.create_task(runner.run(), name=f"writer-{name}"))


#: After the node is gone, this long for a clean stop before the process exits anyway.
ORPHAN_GRACE = 10.0


def watch_parent(parent: int, on_orphaned: Callable[[], object],
                 grace: float = ORPHAN_GRACE, interval: float = 1.0) -> threading.Thread:
    """A thread that outlives a stuck event loop: once the node that started us is gone
    (we were re-parented), ask for a clean stop (``on_orphaned``), and after ``grace``
    seconds end the process. End of stdin is the normal signal, but a stop that hangs
    (a backend that never closes) or a pipe end some other process kept open must not
    leave a writers' process behind the node; the queues are durable, so exiting loses
    nothing that was not written."""
    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("writers: the node (pid %d) is gone; stopping", parent)
        on_orphaned()
        time.sleep(grace)
        log.error("writers: no clean stop within %.0f s of the node's end; exiting", grace)
        os._exit(1)

    thread = threading.Thread(target=run, name="writers-parent-watch", daemon=True)
    thread.start()
    return thread


async def _serve(proc: WritersProcess) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    watch_parent(os.getppid(), lambda: loop.call_soon_threadsafe(reader.feed_eof))

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            await proc.check_tasks()
            await proc.retry_failed(time.monotonic())
            proc.send_stats()
    reporter = asyncio.create_task(report())
    try:
        while True:
            line = await reader.readline()
            if not line:
                break                           # the node is gone
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.error("writers: unreadable control line from the node")
                continue
            op = msg.get("op") if isinstance(msg, dict) else None
            if op == "configure":
                level = msg.get("log_level")
                if isinstance(level, str):
                    logging.getLogger().setLevel(level.upper())
                await proc.configure(msg)
                proc.send_stats()
            elif op == "peers":
                proc.peers(msg)
    finally:
        reporter.cancel()
        await proc.stop()


#: The writers' process runs at this niceness: when the CPUs are busy, routing (the
#: node's process) comes first and the writers catch up from their durable queues.
WRITERS_NICE = 10


#: The cyclic garbage collector's thresholds in the writers' process. Each result read
#: allocates a few dozen containers (the decoded JSON, views, parsed perfdata) that plain
#: reference counting frees; with the default young-generation threshold (700) the
#: collector ran every few results and walked the records in ``RecordCache`` each time,
#: a fifth of the process's CPU (perf/bench_writer_format.py). Cycles are rare here
#: (asyncio's exceptions): collecting them after 50 000 allocations bounds what they hold.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, configuration: never garbage, no need to
    walk it again) and make the young generation larger (``GC_THRESHOLDS``)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class RecordLines(logging.Handler):
    """Each log record as one JSON line on stderr, for the node to log again (module
    doc): a JSON-logging node used to get the writers' lines as plain text in between."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            doc: dict[str, Any] = {"level": record.levelno, "logger": record.name,
                                   "message": record.getMessage()}
            if record.exc_info:
                doc["exception"] = logging.Formatter().formatException(record.exc_info)
            sys.stderr.buffer.write(orjson.dumps(doc) + b"\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def main() -> None:
    try:
        os.nice(WRITERS_NICE)
    except OSError:                            # pragma: no cover - not permitted: run as is
        pass
    logging.basicConfig(level=logging.INFO, handlers=[RecordLines()])
    try:
        import uvloop
        uvloop.install()
    except ImportError:                        # pragma: no cover - uvloop is a dependency
        pass
    tune_gc()
    asyncio.run(_serve(WritersProcess(sys.stdout.buffer)))


if __name__ == "__main__":
    main()
