"""Per-peer input caps: bytes and messages a second that one session may make us read.

The read scheduler (``router.transport.readsched``) shares each loop turn fairly among the
peers that send, but fair is not bounded: one authenticated peer sending flat out still
gets its full share, turn after turn, and with few peers that share is most of the node
(users.md P9, P16: a runaway agent or a replay storm from one satellite saturates the
master). :class:`PeerRate` is a pair of token buckets, one for plaintext bytes and one
for messages, each refilled at its rate and holding up to ``burst`` seconds of it. The
connection charges what it read after each read; when a bucket is in debt the connection
stops reading (its transport paused: TCP back-pressure towards the peer, nothing dropped)
for as long as repaying the debt takes, then queues for a read turn as usual.

Throttling rather than disconnecting: a peer over its budget is usually a legitimate one
catching up (a replay after an outage), and closing it would make it replay again. The
peer is counted (``router_peer_throttled_total``, seconds held in
``router_peer_throttled_seconds_total``) and logged, rate-limited, naming it.

Pure: the caller passes ``now``; a rate of 0 turns that bucket off.
"""

from __future__ import annotations

import logging

__all__ = ["PeerRate"]

log = logging.getLogger("router.transport")


class PeerRate:
    """Token buckets for one session's input (bytes/s, messages/s)."""

    __slots__ = ("bytes_per_second", "messages_per_second", "burst", "_bytes", "_messages",
                 "_at", "throttled", "throttled_seconds")

    def __init__(self, bytes_per_second: float, messages_per_second: float, now: float,
                 burst: float = 1.0) -> None:
        self.bytes_per_second = max(0.0, float(bytes_per_second))
        self.messages_per_second = max(0.0, float(messages_per_second))
        #: Seconds of each rate a full bucket holds (what a quiet peer may send at once).
        self.burst = max(0.001, float(burst))
        self._bytes = self.bytes_per_second * self.burst
        self._messages = self.messages_per_second * self.burst
        self._at = now
        #: Times the session had to stop reading, and for how long in total.
        self.throttled = 0
        self.throttled_seconds = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.bytes_per_second or self.messages_per_second)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        if self.bytes_per_second:
            self._bytes = min(self.bytes_per_second * self.burst,
                              self._bytes + elapsed * self.bytes_per_second)
        if self.messages_per_second:
            self._messages = min(self.messages_per_second * self.burst,
                                 self._messages + elapsed * self.messages_per_second)

    def charge(self, nbytes: int, nmessages: int, now: float) -> float:
        """Take what was just read; returns the seconds the session must now wait before
        it reads again (0.0: none), and counts a throttle when it is more than 0."""
        self._refill(now)
        delay = 0.0
        if self.bytes_per_second:
            self._bytes -= nbytes
            if self._bytes < 0:
                delay = -self._bytes / self.bytes_per_second
        if self.messages_per_second:
            self._messages -= nmessages
            if self._messages < 0:
                delay = max(delay, -self._messages / self.messages_per_second)
        if delay > 0:
            self.throttled += 1
            self.throttled_seconds += delay
        return delay

    def log_throttled(self, who: str, delay: float) -> None:
        """One line about a session held back (its owner limits how often)."""
        log.warning("[%s] input over its caps (%s bytes/s, %s messages/s; "
                    "limits.peer_bytes_per_second/peer_messages_per_second): not read for "
                    "%.2f s (throttled %d times on this session)", who,
                    self.bytes_per_second or "-", self.messages_per_second or "-", delay,
                    self.throttled)
