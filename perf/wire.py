"""What goes over the wire in the benchmarks: names, frames and the agents' messages.

The endpoint and zone names of the benchmark topology (``sat1`` under test, parent
``master``, agents ``agent-NNN`` with service ``svc``), netstring framing, the
``icinga::Hello`` and ``log::SetLogPosition`` frames, an agent's TLS client context, the
``event::CheckResult`` template with its stamping, and the parent's frame scanner.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any, Callable

import orjson

__all__ = [
    "CHECK_RESULT",
    "HELLO",
    "MASTER",
    "PACE_TICK",
    "SAT",
    "SERVICE",
    "agent_name",
    "client_context",
    "log_position_frame",
    "message_template",
    "netstring",
    "scan_frames",
    "stamped_frames",
]

SAT = "sat1"
MASTER = "master"
SERVICE = "svc"
CHECK_RESULT = b"event::CheckResult"
PACE_TICK = 0.02            # with --rate, each agent wakes up every 20 ms


def agent_name(i: int) -> str:
    return f"agent-{i:03d}"


def netstring(payload: bytes) -> bytes:
    return b"%d:%b," % (len(payload), payload)


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # we dial 127.0.0.1; the chain is still verified
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


HELLO = netstring(orjson.dumps({"jsonrpc": "2.0", "method": "icinga::Hello",
                                "params": {"capabilities": 1, "version": 21306}}))


def log_position_frame(position: float) -> bytes:
    """The emulated parent's ``log::SetLogPosition``: it has every message up to
    ``position``, so the node may forget them (and replays only what is newer)."""
    return netstring(orjson.dumps({"jsonrpc": "2.0", "method": "log::SetLogPosition",
                                   "params": {"log_position": position}, "ts": time.time()}))


def message_template(agent: str, payload_bytes: int) -> bytes:
    """The agent's CheckResult as a %-template with 5 %b slots (ts fields), padded."""
    slots = ["execution_end", "execution_start", "schedule_end", "schedule_start", "ts"]

    def build(pad: int) -> bytes:
        cr = {
            "active": True, "check_source": agent,
            "command": ["/usr/lib/nagios/plugins/check_dummy", "0", "OK"],
            "execution_end": "@execution_end@", "execution_start": "@execution_start@",
            "exit_status": 0, "output": "OK - benchmark result" + (" " + "x" * (pad - 1)
                                                                   if pad > 0 else ""),
            "performance_data": ["time=0.001000s;;;0.000000"],
            "previous_hard_state": 0, "schedule_end": "@schedule_end@",
            "schedule_start": "@schedule_start@", "scheduling_source": agent, "state": 0,
            "ttl": 0, "type": "CheckResult",
            "vars_after": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
            "vars_before": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
        }
        msg = {"jsonrpc": "2.0", "method": "event::CheckResult",
               "params": {"cr": cr, "host": agent, "service": SERVICE}, "ts": "@ts@"}
        raw = orjson.dumps(msg).replace(b"%", b"%%")
        for slot in slots:
            raw = raw.replace(b'"@%s@"' % slot.encode(), b"%b")
        return raw

    sample = build(0) % ((b"1700000000.000000",) * 5)
    return build(max(0, payload_bytes - len(sample)))


def stamped_frames(template: bytes, last: int, batch: int) -> tuple[bytes, int]:
    """``batch`` framed CheckResults from ``template`` with strictly increasing stamps.

    Each message gets its own microsecond (after ``last``, the previous batch's final
    one), used for execution_end/start, schedule_start and ts, because Icinga drops results
    whose stamps do not increase per agent. Returns the frames and the new ``last``.
    """
    now = int(time.time() * 1e6)
    first = now if now > last else last + 1
    frames = []
    for us in range(first, first + batch):
        end = b"%d.%06d" % divmod(us, 1_000_000)
        start = b"%d.%06d" % divmod(us - 1000, 1_000_000)
        sched = b"%d.%06d" % divmod(us - 2000, 1_000_000)
        payload = template % (end, start, end, sched, end)
        frames.append(b"%d:%b," % (len(payload), payload))
    return b"".join(frames), first + batch - 1


def scan_frames(buf: bytearray, methods: Any,
                on_check_result: Callable[[bytearray, int, int], None]) -> int:
    """Consume the complete netstring frames at the start of ``buf``.

    An emulated parent must not parse every result (it would become the bottleneck): a
    frame whose first 200 bytes name ``event::CheckResult`` is handed to
    ``on_check_result(buf, start, end)`` unparsed; any other frame is parsed and counted
    in ``methods`` by method. Returns the number of those other frames.
    """
    pos, n, find = 0, len(buf), buf.find
    other = 0
    while True:
        colon = find(b":", pos, pos + 12)
        if colon < 0:
            break
        size = int(buf[pos:colon])
        end = colon + 1 + size
        if end >= n:
            break
        if find(CHECK_RESULT, colon + 1, colon + 1 + min(size, 200)) >= 0:
            on_check_result(buf, colon + 1, end)
        else:
            other += 1
            try:
                methods[orjson.loads(bytes(buf[colon + 1:end])).get("method", "?")] += 1
            except orjson.JSONDecodeError:
                methods["(bad json)"] += 1
        pos = end + 1
    if pos:
        del buf[:pos]
    return other
