"""The node's side of the writers: appending check results to the shared durable queue.

``ResultFeed.submit`` runs on the routing event loop for every consumed
``event::CheckResult`` and only appends the message's raw JSON to a deque (no parsing, no
copy, no I/O). One thread commits everything waiting into the node's one writer queue
(``queue.SharedQueue``), one transaction per round whatever the number of writers (group
commit, like ``replaylog.writer``): a round gathers what arrives in ``batch_seconds``
(50 ms) or ``MAX_BATCH`` results, whichever comes first, so its fsyncs are shared by
tens of results at moderate rates and thousands under load; each
writer reads the queue from its own position. Memory is bounded: beyond
``max_pending_bytes`` waiting bytes ``submit`` drops the result and counts it
(``router_writer_points_total{result="dropped"}``): the routing loop is never blocked by a
slow disk.

A result is *safe* here once committed (or counted as failed): ``mark`` and ``reached``
let the node's checkpoint of processed positions (``router.node.receipts``) wait until
every result it covers is, so a ``kill -9`` between the checkpoint and the commit cannot
lose results the senders will not send again (issue 21).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from router.config import WriterSpec
from router.features.writers.base import WriterBackendError
from router.features.writers.legacy import open_shared_queue
from router.features.writers.queue import REOPEN, SharedQueue, encode_record

__all__ = ["ResultFeed"]

log = logging.getLogger("router.writers")

DEFAULT_MAX_PENDING_BYTES = 64 << 20
#: How long a round waits for results to gather before its commit. 5 ms made a round,
#: with its two fdatasyncs and its GIL hand-overs to the routing loop, every ~25 results
#: at 1 600 results/s: the feed thread took 0.08 of a core and the loop ~0.02 more
#: (0.11 cores in all, +25 % of the node's CPU with one writer); at 50 ms the feed
#: thread takes 0.016 and the node +0.01 (perf/RESULTS.md). A checkpoint of processed
#: positions waits for the round anyway (``mark``), so nothing is lost to a crash.
DEFAULT_BATCH_SECONDS = 0.05
MAX_BATCH = 2048


class ResultFeed:
    """Owns the node process's handle of the shared writer queue and the commit thread."""

    def __init__(self, data_dir: str, specs: Iterable[WriterSpec], *,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                 batch_seconds: float = DEFAULT_BATCH_SECONDS) -> None:
        self.data_dir = data_dir
        self.max_pending_bytes = max_pending_bytes
        self.batch_seconds = batch_seconds
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._pending: deque[tuple[float, bytes]] = deque()
        self._pending_bytes = 0
        self._busy = False
        self._stop = False
        self._queue: SharedQueue | None = None
        #: Per configured writer: its ``max_backlog_bytes``.
        self._bounds: dict[str, int] = {}
        self._reconfigure: list[WriterSpec] | None = None
        self._specs: list[WriterSpec] = []
        #: Why the queue could not be opened (logged once per different reason), and
        #: when to try again.
        self._open_error: str | None = None
        self._reopen_attempts = 0
        self._reopen_at = 0.0
        #: Per writer: results appended, evicted by the byte bound, failed appends.
        self.appended: dict[str, int] = {}
        self.evicted: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.dropped = 0
        #: Results taken by ``submit`` (not dropped), and how many of those a commit
        #: round has settled (committed or counted as failed), in order: ``mark``.
        self._accepted = 0
        self._settled = 0
        self._open(list(specs))
        self._thread = threading.Thread(target=self._run, name="writers-feed", daemon=True)
        self._thread.start()

    def _open(self, specs: list[WriterSpec]) -> None:
        """Register new writers (at the queue's head), forget removed ones, take the new
        bounds (writer thread, or before it starts)."""
        self._specs = specs
        self._bounds = {s.name: s.max_backlog_bytes for s in specs}
        if not specs and self._queue is None:
            return                              # no writers: no queue to open
        try:
            if self._queue is None:
                self._queue = open_shared_queue(self.data_dir, max(self._bounds.values()))
                if self._open_error is not None:
                    log.info("writers: their queue is open again; results are queued")
                self._open_error = None
                self._reopen_attempts = 0
            gone = self._queue.retain(frozenset(self._bounds))
        except WriterBackendError as e:
            if str(e) != self._open_error:
                log.error("writers: cannot open their queue: %s; results for the writers "
                          "are counted as failed until it opens (tried again after %g s, "
                          "doubling to %g s)", e, REOPEN.minimum, REOPEN.maximum)
            self._open_error = str(e)
            self._reopen_at = time.monotonic() + REOPEN.cap(self._reopen_attempts)
            self._reopen_attempts += 1
            self._count_failed(1)
            return
        for name in gone:
            log.info("writer %s: removed from the configuration, its queue position "
                     "forgotten", name)
        limit = self._queue.max_bound
        for name, bound in self._bounds.items():
            if bound > limit:
                # The map was sized at start for the bounds of then; a reload raised
                # this one beyond it. Enforced as configured, the queue would fill its
                # map, and then no append and no eviction could commit: every writer
                # would lose every result until a restart.
                log.warning("writer %s: max_backlog_bytes %d is more than the writers' "
                            "queue opened at start can hold; %d until the node restarts",
                            name, bound, limit)
                self._bounds[name] = limit

    @property
    def writers(self) -> tuple[str, ...]:
        return tuple(self._bounds)

    # -- event loop side -------------------------------------------------------------

    def submit(self, raw: bytes) -> bool:
        """Queue one check result message (its JSON); False when dropped (overload)."""
        with self._lock:
            if self._pending_bytes + len(raw) > self.max_pending_bytes:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10000 == 0:
                    log.warning("writers: %d check results dropped, the queue disk is "
                                "slower than the results arrive", self.dropped)
                return False
            if not self._pending:
                self._wake.notify()
            self._pending.append((time.time(), raw))
            self._pending_bytes += len(raw)
            self._accepted += 1
        return True

    def mark(self) -> int:
        """A mark for everything submitted so far (``reached`` says when it is safe)."""
        return self._accepted

    def reached(self, mark: int) -> bool:
        """Is every result submitted before ``mark`` committed to the queue (or counted
        as failed)? Rounds commit in submission order, so a count tells."""
        return self._settled >= mark

    def reconfigure(self, specs: Iterable[WriterSpec]) -> None:
        """Writers added/removed/changed (reload); applied by the thread between commits."""
        with self._lock:
            self._reconfigure = list(specs)
            self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._busy or self._reconfigure is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._stop = True
            self._wake.notify()
        self._thread.join(10)
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    # -- commit thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and self._reconfigure is None and not self._stop:
                    if self._queue is None and self._bounds:    # to open it again
                        left = self._reopen_at - time.monotonic()
                        if left <= 0:
                            break
                        self._wake.wait(left)
                    else:
                        self._wake.wait()
                if self._stop and not self._pending:
                    return
                specs, self._reconfigure = self._reconfigure, None
                self._busy = True
            if specs is not None:
                self._open(specs)
            elif self._queue is None and self._bounds and time.monotonic() >= self._reopen_at:
                self._open(self._specs)
            if self.batch_seconds > 0 and len(self._pending) < MAX_BATCH:
                time.sleep(self.batch_seconds)        # let a group gather
            with self._lock:
                # At most MAX_BATCH per transaction: a backlog is committed in rounds, so
                # the memory one round holds (encoded values, LMDB's dirty pages) stays small.
                take = min(len(self._pending), MAX_BATCH)
                batch = [self._pending.popleft() for _ in range(take)]
                self._pending_bytes -= sum(len(raw) for _, raw in batch)
            if batch:
                try:
                    self._commit(batch)
                except Exception:   # noqa: BLE001 - the thread must live: checkpoints wait on it
                    log.exception("writers: %d check results not queued", len(batch))
                    self._count_failed(len(batch))
            with self._lock:
                self._settled += len(batch)
                self._busy = False
                self._idle.notify_all()

    def _count_failed(self, n: int) -> None:
        """``n`` results not queued, for every configured writer."""
        for name in self._bounds:
            self.failed[name] = self.failed.get(name, 0) + n

    def _commit(self, batch: list[tuple[float, bytes]]) -> None:
        queue, bounds = self._queue, self._bounds
        if not bounds:
            return                              # no writer configured: nobody to keep it for
        if queue is None:
            self._count_failed(len(batch))
            return
        try:
            added, evicted = queue.append_encoded([encode_record(t, raw) for t, raw in batch],
                                                  bounds)
        except WriterBackendError as e:
            self._count_failed(len(batch))
            log.error("writers: %d check results not queued: %s", len(batch), e)
            return
        for name in bounds:
            self.appended[name] = self.appended.get(name, 0) + added
        for name, n in evicted.items():
            if n:
                self.evicted[name] = self.evicted.get(name, 0) + n
                log.warning("writer %s: backlog above max_backlog_bytes, %d oldest results "
                            "evicted", name, n)
