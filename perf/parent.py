"""The emulated parent of ``router perf``: endpoint ``master`` dialled into the node.

:class:`PerfParent` counts every CheckResult and parses some (all while a replay keys
them); what it received is kept in a :class:`Tally`, which survives the parent's
reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from perf.wire import HELLO, SERVICE, log_position_frame, scan_frames

__all__ = ["PerfParent", "Tally"]


@dataclass
class Tally:
    """What the parent received; survives the parent's reconnect (replay)."""
    check_results: int = 0
    other: int = 0
    methods: collections.Counter[str] = field(default_factory=collections.Counter)
    parse_every: int = 1
    #: (arrival monotonic, latency s) of parsed results
    latencies: list[tuple[float, float]] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    last_ts: float = 0.0
    #: results ignored because their ts was older than last_ts (Icinga's receive rule)
    ignored_older: int = 0
    last_arrival: float = 0.0
    #: replay: (host, execution_end) -> times received; None when not tracking
    keys: dict[tuple[str, Any], int] | None = None
    #: replay: only results stamped at or after this wall clock time count (the phase's)
    keys_since: float = 0.0


class PerfParent(asyncio.Protocol):
    """Endpoint ``master`` dialled into the node: counts results, parses (some of) them."""

    def __init__(self, tally: Tally) -> None:
        self.t = tally
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(HELLO)
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def _set_log_position(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(log_position_frame(self.t.last_ts))
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._now = time.monotonic()
        self.t.other += scan_frames(self.buf, self.t.methods, self._check_result)

    def _check_result(self, buf: bytearray, start: int, end: int) -> None:
        t = self.t
        t.check_results += 1
        t.last_arrival = self._now
        if t.keys is not None or t.check_results % t.parse_every == 0:
            self._parse(bytes(buf[start:end]), self._now)

    def _parse(self, payload: bytes, now_m: float) -> None:
        t = self.t
        try:
            msg = orjson.loads(payload)
            params = msg["params"]
            host, end = params["host"], params["cr"]["execution_end"]
            if params.get("service") != SERVICE or not host.startswith("agent-"):
                t.bad.append(payload[:200].decode(errors="replace"))
            ts = float(msg.get("ts") or 0)
            if ts < t.last_ts:
                # Icinga's JsonRpcConnection ignores a message older than the newest ts
                # it processed from that endpoint; a replay may resend what we have.
                t.ignored_older += 1
                return
            t.latencies.append((now_m, time.time() - float(end)))
            t.last_ts = ts
            if t.keys is not None and float(end) >= t.keys_since:
                key = (host, end)
                t.keys[key] = t.keys.get(key, 0) + 1
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            if len(t.bad) < 10:
                t.bad.append(payload[:200].decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)
