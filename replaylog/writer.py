"""The replay log's single writer thread, with group commit.

Theory of operation
-------------------
LMDB allows one write transaction at a time and a commit costs an fsync (with
``sync=True``), so per-message transactions would cap the log at a few hundred messages
per second. ``ReplayWriter`` owns a ``ReplayStore`` and is its only writer:

* ``submit()`` runs on the event loop and never blocks on I/O: it appends the record to
  a deque under a lock (held for a few hundred nanoseconds) and wakes the writer thread
  when the first record of a batch arrives or the batch is full.
* The writer thread commits everything waiting in ONE ``append_many`` transaction when
  ``batch_messages`` records are waiting, or ``batch_ms`` after the first of them
  arrived, or at once when someone ``flush()``-es. When it falls behind, each
  transaction takes up to ``max_batch`` records, so the fsync cost is shared by more
  messages as the load grows (group commit).
* Other writes (``confirm``, ``prune``, ``enforce_cap``, or any ``call``) are queued to
  the same thread and run between commits, after every record submitted before them
  was committed. They return ``concurrent.futures.Future``; on the loop use
  ``await asyncio.wrap_future(fut)``.
* Readers (replay to a reconnected peer) do not go through this thread: they call
  ``writer.store.iter_from`` / ``read_batch`` from any thread; each read uses its own
  short read transaction and never waits for the writer.

Durability: every accepted record gets the next ticket (``submitted_seq`` right after
the call) and is committed once ``committed_seq`` reaches it; ``flush()`` waits for
that. What a crash can lose is documented in ``replaylog/README.md``: with the defaults,
on ``kill -9`` only the records not yet committed (the current batch, at most
``batch_ms`` old, plus any backlog); ``close()`` commits everything.

Memory is bounded: records waiting for the writer hold at most ``max_pending_bytes`` of
frames; past that ``submit`` refuses the record (returns False), counts it in
``dropped`` and logs once per episode. The loop is never blocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any


from . import keys as K
from .errors import InvalidState, ReplayLogError
from .store import PruneStats, ReplayStore

log = logging.getLogger("router.replaylog")

DEFAULT_BATCH_MESSAGES = 1000
DEFAULT_BATCH_MS = 5.0
DEFAULT_MAX_PENDING_BYTES = 64 << 20
#: A failing file system (full, read-only) fails every commit: after the first error line,
#: one summary line per this many seconds; every record is counted in ``failed``.
FAILURE_LOG_INTERVAL = 60.0

_Record = tuple[str, float, bytes, "str | None"]
OnCommit = Callable[[int, int], None]


class _Op:
    __slots__ = ("args", "barrier", "fn", "future", "kwargs", "ticket")

    def __init__(self, ticket: int, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], barrier: bool = False) -> None:
        self.ticket = ticket
        self.barrier = barrier
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


class ReplayWriter:
    """Owns a ``ReplayStore`` in one background thread; the event loop only submits.

    Args:
        store: the store to write to. The writer is its only writer from now on and
            closes it in ``close()`` (unless ``close_store=False``).
        batch_messages: commit as soon as this many records are waiting (default 1000).
        batch_ms: ... or this long after the first waiting record arrived (default 5 ms).
        max_batch: most records per transaction when the writer is behind
            (default ``8 * batch_messages``).
        max_pending_bytes: frame bytes allowed to wait for the writer (default 64 MiB);
            beyond, ``submit`` refuses records and counts them in ``dropped``.
        on_commit: ``on_commit(records, committed_seq)``, called **in the writer thread**
            after each successful commit. Keep it short and thread-safe (to reach the
            loop, use ``loop.call_soon_threadsafe``); exceptions are logged and ignored.
            It must not call ``flush()``.
    """

    def __init__(self, store: ReplayStore, *, batch_messages: int = DEFAULT_BATCH_MESSAGES,
                 batch_ms: float = DEFAULT_BATCH_MS, max_batch: int | None = None,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                 on_commit: OnCommit | None = None, close_store: bool = True,
                 name: str = "replaylog-writer") -> None:
        if batch_messages < 1 or batch_ms < 0:
            raise ValueError("batch_messages must be >= 1 and batch_ms >= 0")
        self.store = store
        self.batch_messages = batch_messages
        self.batch_ms = batch_ms
        self.max_batch = max(batch_messages, max_batch or 8 * batch_messages)
        self.max_pending_bytes = max_pending_bytes
        self.on_commit = on_commit
        self._close_store = close_store
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)    # writer thread waits here
        self._done = threading.Condition(self._lock)    # flush() waits here
        self._queue: deque[_Record] = deque()
        self._ops: list[_Op] = []
        self._first_at = 0.0
        self._submitted = 0       # tickets handed out (accepted records)
        self._taken = 0           # tickets taken by the writer thread
        self._committed = 0       # tickets committed (or failed, see ``failed``)
        self._flush_target = 0
        self._pending_bytes = 0
        #: zone -> its records accepted but not yet committed (``pending_in``).
        self._pending_zones: dict[str, int] = {}
        self._dropped = 0
        self._failed = 0
        self._failed_unlogged = 0     # writer thread only: failures since the last line
        self._next_failure_log = 0.0  # writer thread only: 0 while commits succeed
        self._commits = 0
        self._refusing = False
        self._closing = False
        self._stop = False
        self._dead = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, batch_messages: int = DEFAULT_BATCH_MESSAGES,
             batch_ms: float = DEFAULT_BATCH_MS, max_batch: int | None = None,
             max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
             on_commit: OnCommit | None = None, **store_kwargs: Any) -> ReplayWriter:
        """Open a ``ReplayStore`` at ``path`` (``store_kwargs``) and a writer owning it."""
        store = ReplayStore(path, **store_kwargs)
        return cls(store, batch_messages=batch_messages, batch_ms=batch_ms,
                   max_batch=max_batch, max_pending_bytes=max_pending_bytes,
                   on_commit=on_commit)

    # -- event loop side -------------------------------------------------------------

    def submit(self, zone: str, ts: float, frame: bytes, object_zone: str | None = None
               ) -> bool:
        """Queue one record for ``zone``; never blocks on I/O. Callable from any thread.

        Returns:
            True when queued; False when refused (more than ``max_pending_bytes``
            waiting, or the writer is closing): counted in ``dropped``, logged once per
            episode.

        Raises:
            ValueError: a zone name that cannot be stored (empty, > 511 UTF-8 bytes).
        """
        K.check_name(zone)
        if object_zone is not None:
            K.check_name(object_zone)
        size = len(frame)
        with self._lock:
            if self._closing or (self._pending_bytes + size > self.max_pending_bytes
                                 and self._queue):
                self._refuse(zone, size)
                return False
            if self._refusing:
                self._refusing = False
                log.warning("replay log: accepting records again (%d refused so far)",
                            self._dropped)
            queue = self._queue
            queue.append((zone, ts, frame, object_zone))
            self._submitted += 1
            self._pending_bytes += size
            zones = self._pending_zones
            zones[zone] = zones.get(zone, 0) + 1
            n = len(queue)
            if n == 1:
                self._first_at = time.monotonic()
                self._wake.notify()
            elif n == self.batch_messages:
                self._wake.notify()
        return True

    def _refuse(self, zone: str, size: int) -> None:
        """Count a refused record (lock held); log once per episode."""
        self._dropped += 1
        if not self._refusing:
            self._refusing = True
            if self._closing:
                log.warning("replay log: writer closed, refusing records (zone %r)", zone)
            else:
                log.warning("replay log: writer is behind, %d bytes waiting (limit %d): "
                            "refusing records until it catches up (counted: dropped)",
                            self._pending_bytes, self.max_pending_bytes)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every record submitted before this call is committed.

        The writer commits right away instead of waiting for ``batch_ms``. With
        ``sync=True`` the records are then on disk; with ``sync=False`` they survive a
        process crash (``close()`` or ``store.sync()`` forces them to disk).

        Returns:
            True when done, False on timeout (or if the writer thread died). Records
            that failed to store (disk full, counted in ``failed``) count as done.
        """
        if threading.current_thread() is self._thread:
            raise InvalidState("flush() called from the replay log writer thread")
        with self._lock:
            target = self._submitted
            if self._committed >= target:
                return True
            if target > self._flush_target:
                self._flush_target = target
                self._wake.notify()
            return self._done.wait_for(lambda: self._committed >= target or self._dead,
                                       timeout) and self._committed >= target

    async def aflush(self, loop: asyncio.AbstractEventLoop | None = None,
                     timeout: float | None = None) -> bool:
        """``flush()`` in the default executor, for the event loop."""
        loop = loop or asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.flush, timeout)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
             ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in the writer thread, after every record submitted
        before this call was committed (records submitted after it may be committed
        first). Its result or exception lands in the Future."""
        return self._call(fn, args, kwargs, barrier=False)

    def call_between(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
                     ) -> concurrent.futures.Future[Any]:
        """``call``, and no record submitted after this call is committed before ``fn``
        has run (a rename of a zone: a later record must not create the new name first,
        review). It splits a batch; the frequent confirmations use ``call``."""
        return self._call(fn, args, kwargs, barrier=True)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              *, barrier: bool) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._closing:
                raise InvalidState("replay log writer is closed")
            op = _Op(self._submitted, fn, args, kwargs, barrier)
            self._ops.append(op)
            self._wake.notify()
        return op.future

    def confirm(self, endpoint: str, ts: float, *, now: float | None = None
                ) -> concurrent.futures.Future[Any]:
        """``store.confirm`` in the writer thread (Future of the new position)."""
        return self.call(self.store.confirm, endpoint, ts, now=now)

    def prune(self, now: float, zones_endpoints: Mapping[str, Sequence[str]],
              log_duration: Mapping[str, float], **kwargs: Any
              ) -> concurrent.futures.Future[Any]:
        """``store.prune`` in the writer thread (Future of ``PruneStats``)."""
        return self.call(self.store.prune, now, zones_endpoints, log_duration, **kwargs)

    def enforce_cap(self, max_bytes: int | None = None) -> concurrent.futures.Future[Any]:
        """``store.enforce_cap`` in the writer thread (Future of evicted counts)."""
        return self.call(self.store.enforce_cap, max_bytes)

    # -- counters --------------------------------------------------------------------

    @property
    def submitted_seq(self) -> int:
        """Records accepted by ``submit`` so far (the ticket of the last one)."""
        return self._submitted

    @property
    def committed_seq(self) -> int:
        """Every record with a ticket up to this one is committed (or failed)."""
        return self._committed

    @property
    def pending(self) -> int:
        """Records accepted but not yet committed."""
        return self._submitted - self._committed

    def pending_in(self, zone: str) -> int:
        """Records of ``zone`` accepted but not yet committed: a replay of one zone goes
        live when its own are in the file (with the global count, steady logging for
        another zone, an absent parent's, kept a reconnected agent replaying: review)."""
        return self._pending_zones.get(zone, 0)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def dropped(self) -> int:
        """Records refused by ``submit`` (writer behind or closed)."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Records accepted but not stored (disk full even after eviction, errors)."""
        return self._failed

    @property
    def commits(self) -> int:
        """Write transactions committed for records."""
        return self._commits

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"submitted": self._submitted, "committed": self._committed,
                    "pending": self._submitted - self._committed,
                    "pending_bytes": self._pending_bytes, "dropped": self._dropped,
                    "failed": self._failed, "commits": self._commits,
                    "alive": self._thread.is_alive() and not self._dead}

    # -- shutdown --------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new records, commit every waiting one, stop the thread, close the store.

        Returns:
            True when everything was committed and the thread stopped; False when it did
            not finish within ``timeout`` (the store is then left open).
        """
        if threading.current_thread() is self._thread:
            raise InvalidState("close() called from the replay log writer thread")
        with self._lock:
            if self._closed:
                return True
            self._closing = True
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("replay log writer did not stop within %s s; %d record(s) pending",
                      timeout, self.pending)
            return False
        self._closed = True
        if self._close_store:
            self.store.close()
        return not self._dead

    async def aclose(self, loop: asyncio.AbstractEventLoop | None = None,
                     timeout: float | None = None) -> bool:
        loop = loop or asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.close, timeout)

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug: make it visible, and release the waiters
            log.exception("replay log writer thread died")
            with self._lock:
                self._dead = True
                self._done.notify_all()
            raise

    def _loop(self) -> None:
        batch_s = self.batch_ms / 1000.0
        wake = self._wake
        while True:
            with self._lock:
                while True:
                    queued = len(self._queue)
                    if self._ops or self._stop:
                        break
                    if queued:
                        if queued >= self.batch_messages or self._flush_target > self._taken:
                            break
                        remaining = self._first_at + batch_s - time.monotonic()
                        if remaining <= 0:
                            break
                        wake.wait(remaining)
                    else:
                        wake.wait()
                queue = self._queue
                # A barrier op runs exactly between the records submitted before it and
                # those after: a batch that ran past its ticket committed later records
                # first (a zone's new name got its own id before the rename, review).
                limit = self.max_batch
                for op in self._ops:
                    if op.barrier:
                        limit = min(limit, op.ticket - self._taken)
                if len(queue) <= limit:
                    batch = list(queue)
                    queue.clear()
                else:
                    batch = [queue.popleft() for _ in range(max(0, limit))]
                self._taken += len(batch)
                ready = [op for op in self._ops if op.ticket <= self._taken]
                if ready:
                    self._ops = [op for op in self._ops if op.ticket > self._taken]
                stop = self._stop and not queue and not self._ops
            if batch:
                self._commit(batch)
            for op in ready:
                self._run_op(op)
            if stop:
                return

    def _commit(self, batch: list[_Record]) -> None:
        ok = False
        try:
            self.store.append_many(batch)
            ok = True
        except ReplayLogError as e:
            self._log_failure(len(batch), e, unexpected=False)
        except Exception as e:
            self._log_failure(len(batch), e, unexpected=True)
        else:
            if self._next_failure_log:
                log.warning("replay log: records are stored again (%d more not stored "
                            "since the last error line)", self._failed_unlogged)
                self._failed_unlogged = 0
                self._next_failure_log = 0.0
        size = sum(len(r[2]) for r in batch)
        counts: dict[str, int] = {}
        for record in batch:
            counts[record[0]] = counts.get(record[0], 0) + 1
        with self._lock:
            self._committed += len(batch)
            self._pending_bytes -= size
            zones = self._pending_zones
            for zone, n in counts.items():
                left = zones.get(zone, 0) - n
                if left > 0:
                    zones[zone] = left
                else:
                    zones.pop(zone, None)
            if ok:
                self._commits += 1
            else:
                self._failed += len(batch)
            committed = self._committed
            self._done.notify_all()
        if ok and self.on_commit is not None:
            try:
                self.on_commit(len(batch), committed)
            except Exception:
                log.exception("replay log: on_commit callback failed")

    def _log_failure(self, count: int, error: Exception, *, unexpected: bool) -> None:
        """Log a batch that was not stored: the first at once, then one line per
        ``FAILURE_LOG_INTERVAL`` while the failures go on (the log must not flood)."""
        self._failed_unlogged += count
        now = time.monotonic()
        if now < self._next_failure_log:
            return
        first = not self._next_failure_log
        self._next_failure_log = now + FAILURE_LOG_INTERVAL
        count, self._failed_unlogged = self._failed_unlogged, 0
        log.error("replay log: %d record(s) not stored%s: %s (while this goes on: one line "
                  "per %.0f s, every record counted in failed)", count,
                  "" if first else f" in the last {FAILURE_LOG_INTERVAL:.0f} s", error,
                  FAILURE_LOG_INTERVAL, exc_info=error if unexpected else None)

    @staticmethod
    def _run_op(op: _Op) -> None:
        if not op.future.set_running_or_notify_cancel():
            return
        try:
            result = op.fn(*op.args, **op.kwargs)
        except BaseException as e:
            op.future.set_exception(e)
        else:
            op.future.set_result(result)


__all__ = [
    "DEFAULT_BATCH_MESSAGES",
    "DEFAULT_BATCH_MS",
    "DEFAULT_MAX_PENDING_BYTES",
    "PruneStats",
    "ReplayWriter",
]
