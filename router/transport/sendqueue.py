"""Bounded per-peer send queue with water marks and check-result coalescing.

Why a queue of our own in front of the transport: Icinga keeps an unbounded vector of
encoded messages per connection, so one slow peer grows the process until the OOM killer
steps in (users.md P9, P20). Here every connected peer has one ``SendQueue`` holding
netstring frames that are *shared* between targets (a message fanned out to ten peers is
encoded once and referenced ten times).

The queue itself does no I/O and takes no decisions about other connections; it reports:

- ``congested`` becomes True when bytes or messages reach the high water mark, and False
  again once both are at or below the low water mark. The node pauses reading from the
  connections that feed a congested queue (TCP backpressure) and resumes them when it clears.
- ``over_hard_limit``: the queue kept growing far past high water (sources that were paused
  still had data in flight). The node treats the peer as a slow consumer.

Coalescing: while congested, a new ``event::CheckResult`` for a (host, service) that is
still waiting in the queue replaces the waiting one. The older frame is dropped from its
slot and the newer one is appended at the tail, never written into the old slot: receivers
drop messages whose ``ts`` is older than the last one seen, so frames must leave in stamp
order. Every replacement is counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Water marks of one send queue."""

    high_bytes: int = 8 * 1024 * 1024
    low_bytes: int = 2 * 1024 * 1024
    high_messages: int = 20_000
    low_messages: int = 5_000
    #: Past this many bytes the peer is a slow consumer even though its sources are paused.
    hard_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if not (0 < self.low_bytes < self.high_bytes <= self.hard_bytes):
            raise ValueError("need 0 < low_bytes < high_bytes <= hard_bytes")
        if not (0 < self.low_messages < self.high_messages):
            raise ValueError("need 0 < low_messages < high_messages")


class _Entry:
    """One queued frame; ``frame`` is set to None when a newer result supersedes it."""

    __slots__ = ("frame", "key", "method", "ts", "rank")

    def __init__(self, frame: bytes, key: Hashable | None, method: str, ts: float,
                 rank: tuple[object, float] | None = None) -> None:
        self.frame: bytes | None = frame
        self.key = key
        self.method = method
        self.ts = ts
        self.rank = rank


class Ledger:
    """Logged frames written to a peer that the peer has not confirmed yet.

    A frame handed to the transport can still be lost: in our socket buffer, on the
    wire, or unread by a peer that goes away. Icinga covers that by logging every logged
    message and replaying from the position the peer confirmed (``log::SetLogPosition``,
    every 5 s). We keep just the unconfirmed tail in memory: ``confirm`` drops what the
    peer has, and when the connection is lost the rest goes to the replay log, so the
    peer gets it again on its return (a receiver ignores what is older than the newest
    ``ts`` it processed, as Icinga does). Bounded by ``max_bytes``: beyond it the oldest
    frames leave unprotected and are counted in ``overflowed``.
    """

    __slots__ = ("_entries", "bytes", "max_bytes", "overflowed")

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        # Made on the first frame and dropped when confirmed empty: an empty deque is
        # 600 bytes, and most of 10 000 agents are sent nothing logged (issue 22).
        self._entries: deque[tuple[float, bytes, str]] | None = None
        self.bytes = 0
        self.max_bytes = max_bytes
        self.overflowed = 0

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

    def add(self, ts: float, frame: bytes, method: str) -> None:
        entries = self._entries
        if entries is None:
            entries = self._entries = deque()
        entries.append((ts, frame, method))
        self.bytes += len(frame)
        while self.bytes > self.max_bytes and len(entries) > 1:
            self.bytes -= len(entries.popleft()[1])
            self.overflowed += 1

    @property
    def newest(self) -> float:
        """Stamp of the newest unconfirmed frame (0.0 when the peer confirmed them all)."""
        return self._entries[-1][0] if self._entries else 0.0

    def confirm(self, position: float) -> None:
        """The peer has everything stamped up to ``position``."""
        entries = self._entries
        if entries is None:
            return
        while entries and entries[0][0] <= position:
            self.bytes -= len(entries.popleft()[1])
        if not entries:
            self._entries = None

    def drain(self) -> list[tuple[float, bytes, str]]:
        """Everything unconfirmed, oldest first; the ledger is empty afterwards."""
        out = list(self._entries) if self._entries is not None else []
        self._entries = None
        self.bytes = 0
        return out


class SendQueue:
    """FIFO of framed messages for one peer, bounded by water marks."""

    __slots__ = ("limits", "_entries", "_by_key", "bytes", "messages", "congested",
                 "coalesced", "high_water_events")

    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
        # Made on the first put and dropped whenever a flush empties it: most of 10 000
        # agents are sent nothing for minutes, and an empty deque is 600 bytes (issue 22).
        self._entries: deque[_Entry] | None = None
        self._by_key: dict[Hashable, _Entry] = {}
        #: Bytes of live frames waiting (not yet handed to the transport).
        self.bytes = 0
        #: Live frames waiting.
        self.messages = 0
        self.congested = False
        #: Frames replaced by a newer check result for the same object.
        self.coalesced = 0
        #: How often the queue crossed its high water mark.
        self.high_water_events = 0

    def __len__(self) -> int:
        return self.messages

    @property
    def over_hard_limit(self) -> bool:
        return self.bytes > self.limits.hard_bytes

    def put(self, frame: bytes, method: str, key: Hashable | None = None,
            ts: float = 0.0, rank: tuple[object, float] | None = None) -> bool:
        """Append ``frame``; return True when this put made the queue congested.

        ``key`` identifies a coalescable message (host, service) and is None for
        everything that must be delivered as is. ``ts`` (the frame's stamp) marks a
        logged message that goes to the connection's :class:`Ledger` once written.
        ``rank`` (a check result's state and execution end): the newest queued copy of
        ``key`` is superseded only by one of the same state that ran no earlier. A
        state change dropped while congested was an outage the parent never saw (no
        history, no notification); an older run arriving later replaced the newer one
        upstream (review).
        """
        if key is not None:
            older = self._by_key.get(key)
            if older is not None and self.congested and (
                    rank is None or older.rank is None
                    or rank[0] == older.rank[0] and rank[1] >= older.rank[1]):
                # Superseded while we could not keep up: drop the older copy.
                self.bytes -= len(older.frame)  # type: ignore[arg-type]
                self.messages -= 1
                older.frame = None
                self.coalesced += 1
            entry = _Entry(frame, key, method, ts, rank)
            self._by_key[key] = entry
        else:
            entry = _Entry(frame, None, method, ts)
        entries = self._entries
        if entries is None:
            entries = self._entries = deque()
        entries.append(entry)
        self.bytes += len(frame)
        self.messages += 1
        if not self.congested and (self.bytes >= self.limits.high_bytes
                                   or self.messages >= self.limits.high_messages):
            self.congested = True
            self.high_water_events += 1
            return True
        return False

    def take(self, max_bytes: int, ledger: Ledger | None = None
             ) -> tuple[list[bytes], list[str]]:
        """Pop frames worth up to ``max_bytes`` (at least one frame if any is waiting).

        Returns the frames and their methods (for per-method sent counters). Frames put
        with a ``ts`` are recorded in ``ledger`` (the caller writes them now).
        """
        frames: list[bytes] = []
        methods: list[str] = []
        taken = 0
        entries = self._entries
        if entries is None:
            return frames, methods
        by_key = self._by_key
        while entries and taken < max_bytes:
            entry = entries.popleft()
            frame = entry.frame
            if frame is None:
                continue
            if entry.key is not None and by_key.get(entry.key) is entry:
                del by_key[entry.key]
            frames.append(frame)
            methods.append(entry.method)
            taken += len(frame)
            if ledger is not None and entry.ts:
                ledger.add(entry.ts, frame, entry.method)
        self.bytes -= taken
        self.messages -= len(frames)
        if not entries:
            self._entries = None
        return frames, methods

    def update_congestion(self) -> bool:
        """Clear ``congested`` when both marks are at or below low water.

        Returns True when the queue just stopped being congested (time to resume the
        paused sources).
        """
        if self.congested and (self.bytes <= self.limits.low_bytes
                               and self.messages <= self.limits.low_messages):
            self.congested = False
            return True
        return False

    def clear(self) -> list[tuple[bytes, str]]:
        """Empty the queue (the peer is gone); return the unsent frames with their methods."""
        left = [(e.frame, e.method) for e in self._entries or () if e.frame is not None]
        self._entries = None
        self._by_key.clear()
        self.bytes = 0
        self.messages = 0
        self.congested = False
        return left
