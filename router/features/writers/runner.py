"""One writer in the writers' process: queue -> backend, with batching, retries, timeouts.

The runner reads the node's LMDB queue from its own position (``queue.WriterQueue``),
turns each stored message back into its ``params`` dict, hands batches to its backend and
confirms its position only after the backend said the batch is durable. So what a crash
at any moment can cause is a batch sent twice, never one lost; the backends make sending
twice harmless (docs/writers.md). Every backend call is bounded by ``spec.timeout``: a
backend that accepts and never answers costs a timeout, counted, then a reconnect with
backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from router.config import WriterSpec
from router.features.writers.base import Batch, HAView, WriterBackend, WriterBackendError
from router.features.writers.queue import QueueReader
from router.features.writers.records import RecordCache
from router.features.writers.registry import backend_class

__all__ = ["WriterRunner", "ZoneView"]

log = logging.getLogger("router.writers")
T = TypeVar("T")

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
IDLE_POLL = 0.05
EVICT_EVERY = 5.0


class ZoneView:
    """``HAView``: our zone and which of its endpoints are connected (set by the node)."""

    def __init__(self, node_name: str, zone_endpoints: tuple[str, ...]) -> None:
        self._node_name = node_name
        self._zone_endpoints = tuple(sorted(zone_endpoints))
        self._connected: frozenset[str] = frozenset()

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def zone_endpoints(self) -> tuple[str, ...]:
        return self._zone_endpoints

    def connected_peers(self) -> frozenset[str]:
        return self._connected

    def update(self, zone_endpoints: tuple[str, ...], connected: frozenset[str]) -> None:
        self._zone_endpoints = tuple(sorted(zone_endpoints))
        self._connected = connected & frozenset(self._zone_endpoints) - {self._node_name}


class WriterRunner:
    """Drives one backend from one queue until cancelled."""

    def __init__(self, spec: WriterSpec, queue: QueueReader, node_name: str, ha: HAView,
                 executor: concurrent.futures.Executor,
                 factory: Callable[..., WriterBackend] | None = None,
                 records: RecordCache | None = None) -> None:
        """``records``: the process's decoded records, shared by its runners so that a
        record is decoded (and its perfdata parsed) once for all writers; a runner of
        its own gets a small cache of its own."""
        self.spec = spec
        self.queue = queue
        self._records = records if records is not None else RecordCache(
            2 * spec.flush_threshold)
        self._executor = executor
        self.errors: dict[str, int] = {}
        self.written = 0
        self.invalid = 0
        self.batches = 0
        self.active = False
        self.connected = False
        self.last_error = ""
        self.delays: deque[float] = deque(maxlen=20000)
        self._backoff = BACKOFF_MIN
        self._position = 0
        self._last_evict = 0.0
        make = factory or backend_class(spec.type)
        self.backend: WriterBackend = make(spec, node_name, ha, self.count_error)
        self.queue_stats = queue.stats()

    def count_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _bounded(self, what: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.spec.timeout):
                return await call
        except TimeoutError:
            raise WriterBackendError("timeout", f"{what} took longer than "
                                     f"{self.spec.timeout:g}s") from None

    def _failed(self, e: WriterBackendError) -> None:
        self.count_error(e.reason)
        if str(e) != self.last_error or self._backoff >= BACKOFF_MAX:
            log.warning("writer %s (%s): %s; retrying in %.1fs", self.spec.name,
                        self.spec.type, e, self._backoff)
        self.last_error = str(e)

    async def _sleep_backoff(self) -> None:
        await asyncio.sleep(self._backoff * random.uniform(0.5, 1.0))
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    async def _connect(self) -> None:
        await self._bounded("connect", self.backend.open())
        stored = await self._bounded("committed_position", self.backend.committed_position())
        if stored is not None and stored > self._position:
            head = self.queue_stats.head   # read this step: a position of ours is never above it
            if stored > head:
                # A position from another queue (the data directory restored from a
                # backup or snapshot): taken as ours, it passed every record up to it
                # unwritten and uncounted. Write from our own position instead.
                log.warning("writer %s (%s): the backend holds queue position %d, beyond "
                            "this queue's newest %d (data directory restored or "
                            "re-created?): writing from the queue's own position; the "
                            "backend may get some results it has again", self.spec.name,
                            self.spec.type, stored, head)
            else:
                await self._io(self.queue.confirm, stored)
                self._position = stored
        self.connected = True
        # The backoff is reset by a batch written (or an empty queue), not here: a batch
        # that fails every time on a connection that opens fine was retried every second
        # for good (review).
        if self.last_error:
            log.info("writer %s (%s): connected again", self.spec.name, self.spec.type)
        self.last_error = ""

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._step()
                except WriterBackendError as e:
                    # Only the queue's own calls raise it this far (the backend's are
                    # handled in the step): count it and retry; the backend stays
                    # connected, and a batch not confirmed is read again.
                    self._failed(e)
                    await self._sleep_backoff()
        finally:
            self.active = False
            # Run again after a crash (WritersProcess.check_tasks), connect again: a
            # backend that stores its position (PostgreSQL) tells where to resume. Kept
            # connected, the runner re-sent a batch it had written but not confirmed in
            # the queue (found by review: history rows twice).
            self.connected = False
            try:
                async with asyncio.timeout(5):
                    await self.backend.close()
            except (TimeoutError, Exception):     # noqa: BLE001 - shutting down anyway
                pass

    async def _step(self) -> None:
        now = time.time()
        if now - self._last_evict >= EVICT_EVERY or now < self._last_evict:   # (a step back)
            self._last_evict = now
            evicted = await self._io(self.queue.evict_older, now - self.spec.max_backlog_age)
            if evicted:
                log.warning("writer %s: %d results older than max_backlog_age evicted",
                            self.spec.name, evicted)
        self.queue_stats = await self._io(self.queue.stats)
        if not self.connected:
            try:
                try:
                    await self._connect()
                except (WriterBackendError, asyncio.CancelledError):
                    raise
                except Exception as e:           # noqa: BLE001 - a bug: log, retry later
                    log.exception("writer %s: internal error while connecting", self.spec.name)
                    raise WriterBackendError("internal_error", repr(e)) from e
            except WriterBackendError as e:
                self._failed(e)
                await self.backend.close()
                await self._sleep_backoff()
                return
        try:
            self.active = await self._bounded("holds_role", self.backend.holds_role(now))
        except WriterBackendError as e:
            self._failed(e)
            await self._reconnect_later()
            return
        if not self.active:
            await asyncio.sleep(min(self.spec.flush_interval, 1.0))
            return
        records = await self._io(self.queue.read, self._position, self.spec.flush_threshold)
        if not records:
            self._backoff = BACKOFF_MIN
            await asyncio.sleep(IDLE_POLL)
            return
        # Appended "later than now": the clock stepped back since. Waiting for the
        # stamp would hold a partial batch back as long as the step (found by review).
        oldest = min(records[0][1], now)
        wait = oldest + self.spec.flush_interval - now
        if len(records) < self.spec.flush_threshold and wait > 0:
            await asyncio.sleep(min(wait, IDLE_POLL * 4))
            if time.time() < oldest + self.spec.flush_interval:
                return
            records = await self._io(self.queue.read, self._position,
                                     self.spec.flush_threshold)
            if not records:
                # Gone meanwhile: the node's feed removed this writer (a reload it applied
                # before this process) or evicted them; _write needs one (review).
                return
        await self._write(records)

    async def _write(self, records: list[tuple[int, float, bytes]]) -> None:
        batch: list[tuple[int, dict[str, Any]]] = []
        decode = self._records.decode
        for position, _, raw in records:
            params = decode(position, raw)
            if params is None:
                self.invalid += 1
                self.count_error("invalid_record")
                continue
            batch.append((position, params))
        skipped: set[int] = set()
        refused = 0          # records the backend skipped (counted by it, not written)
        try:
            if batch:
                try:
                    outcome = await self._bounded("write",
                                                  self.backend.write(_as_batch(batch)))
                    refused = outcome or 0
                except (WriterBackendError, asyncio.CancelledError):
                    raise
                except Exception:                # noqa: BLE001 - a bug must not stop the queue
                    log.exception("writer %s: internal error writing a batch of %d; "
                                  "retrying its records one by one", self.spec.name,
                                  len(batch))
                    skipped = await self._write_one_by_one(batch)
        except WriterBackendError as e:
            self._failed(e)
            await self._reconnect_later()
            return
        last = records[-1][0]
        since = await self._io(self.queue.confirm, last)
        self._position = last
        self._backoff = BACKOFF_MIN
        done = time.time()
        # Records the node's byte bound evicted while this batch was on the way are
        # counted as evicted (their count is out already); counted as written too, the
        # two would add up to more than the queue ever held.
        self.written += max(0, sum(1 for position, _ in batch
                                   if position > since and position not in skipped) - refused)
        self.batches += 1
        for _, appended_at, _ in records:
            self.delays.append(done - appended_at)

    async def _write_one_by_one(self, batch: list[tuple[int, dict[str, Any]]]) -> set[int]:
        """After an unexpected exception: each record alone; a record that still raises
        one is skipped and counted (``internal_error``) so it cannot block the queue.
        The positions skipped."""
        skipped: set[int] = set()
        for item in batch:
            try:
                if await self._bounded("write", self.backend.write(_as_batch([item]))):
                    skipped.add(item[0])          # refused by the backend, counted by it
            except (WriterBackendError, asyncio.CancelledError):
                raise
            except Exception:                    # noqa: BLE001
                self.count_error("internal_error")
                log.exception("writer %s: skipping record %d", self.spec.name, item[0])
                skipped.add(item[0])
        return skipped

    async def _reconnect_later(self) -> None:
        self.connected = False
        self.active = False
        await self.backend.close()
        await self._sleep_backoff()

    def stats(self) -> dict[str, Any]:
        q = self.queue_stats
        now = time.time()
        delays = sorted(self.delays)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else 0.0
        return {
            "type": self.spec.type,
            "written": self.written,
            "invalid": self.invalid,
            "batches": self.batches,
            "errors": dict(self.errors),
            "backlog": q.backlog,
            "backlog_bytes": q.bytes,
            "evicted": q.evicted,
            "position": q.position,
            "lag_seconds": max(0.0, now - q.oldest_appended_at)
            if q.oldest_appended_at is not None and q.backlog else 0.0,
            "delay_p99_seconds": p99,
            "active": self.active,
            "connected": self.connected,
            "last_error": self.last_error,
        }


def _as_batch(batch: list[tuple[int, dict[str, Any]]]) -> Batch:
    return batch
