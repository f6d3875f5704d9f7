from __future__ import annotations

import asyncio
import re
import socket
import threading

import pytest

from router.errors import RouterError
from router.ops.http import StatusServer, json_response
from router.ops.statusview import StatusFetchError, fetch_status, format_status, status_url

NOW = 1_700_000_000.0

SAMPLE = {
    "node": {"name": "master1", "zone": "master", "role": "master", "version": "0.1.0",
             "started": NOW - 90061, "uptime": 90061.0, "listen": "0.0.0.0:5665",
             "status_listen": "127.0.0.1:5666"},
    "zones": [
        {"name": "master", "parent": None, "global": False, "relation": "local",
         "connected": True, "endpoints": ["master1", "master2"]},
        {"name": "sat-eu", "parent": "master", "global": False, "relation": "child",
         "connected": False, "endpoints": ["sat-eu-1", "sat-eu-2"]},
        {"name": "global-templates", "parent": None, "global": True, "relation": "global",
         "connected": False, "endpoints": []},
    ],
    "endpoints": [
        {"name": "master1", "zone": "master", "relation": "self", "connected": True,
         "direction": None, "remote_address": None, "connected_since": None,
         "icinga_version": None, "messages_received": 0, "messages_sent": 0,
         "bytes_received": 0, "bytes_sent": 0, "messages_received_per_second": 0.0,
         "messages_sent_per_second": 0.0, "send_queue_bytes": 0,
         "send_queue_messages": 0, "last_message_received": None,
         "last_message_sent": None, "refused": 0},
        {"name": "master2", "zone": "master", "relation": "peer", "connected": True,
         "direction": "outbound", "remote_address": "10.0.0.2:5665",
         "connected_since": NOW - 3725, "icinga_version": 21306,
         "messages_received": 123456, "messages_sent": 654321, "bytes_received": 10 ** 8,
         "bytes_sent": 2 * 10 ** 8, "messages_received_per_second": 12.3456,
         "messages_sent_per_second": 45.6, "send_queue_bytes": 3 * 1024 * 1024 // 2,
         "send_queue_messages": 17, "last_message_received": NOW - 1,
         "last_message_sent": NOW - 2, "refused": 7},
        {"name": "sat-eu-1", "zone": "sat-eu", "relation": "child", "connected": False,
         "direction": None, "remote_address": None, "connected_since": None,
         "icinga_version": None, "messages_received": 5, "messages_sent": 6,
         "bytes_received": 50, "bytes_sent": 60, "messages_received_per_second": 0.0,
         "messages_sent_per_second": 0.0, "send_queue_bytes": 0,
         "send_queue_messages": 0, "last_message_received": None,
         "last_message_sent": None, "refused": 0},
    ],
    "connections": {"handshaking": 1, "anonymous": 2, "established": 1},
    "totals": {"messages_received": 123461, "messages_sent": 654327,
               "messages_refused": 7, "handshake_failures": 3, "check_results": 99999},
    "process": {"rss_bytes": 52428800, "cpu_seconds": 12.345, "open_fds": 42},
}


def row(text: str, first: str) -> list[str]:
    """The cells of the table row starting with ``first`` (split on runs of 2+ spaces)."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row for {first!r} in:\n{text}")


def test_format_sample() -> None:
    text = format_status(SAMPLE, now=NOW)
    lines = text.splitlines()
    # Node line.
    assert "master1" in lines[0] and "zone master" in lines[0] and "role master" in lines[0]
    assert "uptime 1d1h1m" in text
    assert "listen 0.0.0.0:5665" in text
    # Sections in order.
    order = [text.index(h) for h in ("Zones (3)", "Endpoints (2/3 connected)", "Totals",
                                     "Process")]
    assert order == sorted(order)
    # Zones table.
    assert row(text, "ZONE") == ["ZONE", "RELATION", "PARENT", "CONN", "ENDPOINTS"]
    assert row(text, "master") == ["master", "local", "-", "y", "master1, master2"]
    assert row(text, "sat-eu") == ["sat-eu", "child", "master", "n", "sat-eu-1, sat-eu-2"]
    assert row(text, "global-templates")[:2] == ["global-templates", "global"]
    # Endpoints table.
    assert row(text, "ENDPOINT") == ["ENDPOINT", "ZONE", "RELATION", "CONN", "DIR", "SINCE",
                                     "IN/S", "OUT/S", "QUEUE", "REFUSED"]
    assert row(text, "master2") == ["master2", "master", "peer", "y", "outbound",
                                    "1h2m5s", "12.35", "45.60", "1.5 MiB", "7"]
    assert row(text, "sat-eu-1") == ["sat-eu-1", "sat-eu", "child", "n", "-", "-",
                                     "0.00", "0.00", "0 B", "0"]
    assert row(text, "master1")[:5] == ["master1", "master", "self", "y", "-"]
    # Totals and process.
    assert re.search(r"connections:\s+1 established, 1 handshaking, 2 anonymous", text)
    assert re.search(r"messages received:\s+123461", text)
    assert re.search(r"messages sent:\s+654327", text)
    assert re.search(r"messages refused:\s+7", text)
    assert re.search(r"handshake failures:\s+3", text)
    assert re.search(r"check results:\s+99999", text)
    assert re.search(r"RSS:\s+50\.0 MiB", text)
    assert re.search(r"CPU:\s+12\.35 s", text)
    assert re.search(r"open fds:\s+42", text)
    assert text.endswith("\n")


def test_columns_aligned() -> None:
    text = format_status(SAMPLE, now=NOW)
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.strip().startswith("ENDPOINT")))
    table = lines[start:start + 5]          # header, rule, three rows
    # Right-aligned numeric column: every row ends its REFUSED cell at the same column.
    widths = {len(line) for line in table[1:]}
    assert len(widths) == 1, table
    # The ZONE column starts at the same offset in every row.
    zone_col = table[0].index("ZONE")
    for line in table[2:]:
        assert line[zone_col - 2:zone_col] == "  " and line[zone_col] != " "


def test_format_empty_and_old_schema() -> None:
    text = format_status({}, now=NOW)
    assert "Node -" in text
    assert "Zones (0)" in text and "Endpoints (0/0 connected)" in text
    assert re.search(r"messages received:\s+-", text)
    assert re.search(r"RSS:\s+-", text)

    old = {
        "node": {"name": "n1", "started": NOW - 65},        # no uptime: derived
        "zones": [{"name": "z"}],                            # no relation/connected
        "endpoints": [{"name": "e1", "connected": None, "send_queue_bytes": None,
                       "messages_received_per_second": "fast"}, "garbage"],
        "totals": None,
        "process": {"rss_bytes": None},
    }
    text = format_status(old, now=NOW)
    assert "uptime 1m5s" in text
    assert row(text, "z") == ["z", "-", "-", "-", "-"]
    assert row(text, "e1") == ["e1", "-", "-", "-", "-", "-", "fast", "-", "-", "-"]
    assert "Endpoints (0/1 connected)" in text
    assert format_status("not a dict", now=NOW)  # type: ignore[arg-type]


def test_format_sanitises_control_characters() -> None:
    doc = {"node": {"name": "evil\x1b[2Jname"}, "endpoints": [{"name": "a\nb"}]}
    text = format_status(doc, now=NOW)
    assert "\x1b" not in text
    assert "evil?[2Jname" in text
    assert "a?b" in text


def test_format_uses_current_time_by_default() -> None:
    import time

    doc = {"node": {"name": "n", "started": time.time() - 10}}
    assert re.search(r"uptime (9|10|11)s", format_status(doc))


def test_status_url() -> None:
    assert status_url("http://127.0.0.1:5666") == "http://127.0.0.1:5666/v1/status"
    assert status_url("http://127.0.0.1:5666/") == "http://127.0.0.1:5666/v1/status"
    assert status_url("127.0.0.1:5666") == "http://127.0.0.1:5666/v1/status"
    assert status_url("http://h:1/v1/status") == "http://h:1/v1/status"


# --------------------------------------------------------------------------- fetching


class ServerThread:
    """A StatusServer on its own loop in a background thread."""

    def __init__(self, routes) -> None:
        self.routes = routes
        self.loop = asyncio.new_event_loop()
        self.server = StatusServer(routes)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0),
                                         self.loop).result(5)
        return f"http://127.0.0.1:{self.server.port}"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_fetch_status_roundtrip() -> None:
    with ServerThread({"/v1/status": lambda q: json_response(SAMPLE, query=q)}) as url:
        doc = fetch_status(url, timeout=5)
        assert doc == SAMPLE
        assert fetch_status(url + "/", timeout=5) == SAMPLE
        assert "master2" in format_status(doc, now=NOW)


def test_fetch_status_unreachable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                               # nothing listens there now
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(StatusFetchError) as info:
        fetch_status(url, timeout=2)
    assert isinstance(info.value, RouterError)
    message = str(info.value)
    assert f"127.0.0.1:{port}/v1/status" in message
    assert "refused" in message.lower()


def test_fetch_status_http_error_and_bad_body() -> None:
    routes = {"/v1/status": lambda q: (200, "application/json", b"[1, 2]")}
    with ServerThread(routes) as url:
        with pytest.raises(StatusFetchError, match="not a JSON object"):
            fetch_status(url)
    routes = {"/v1/status": lambda q: (200, "text/plain", b"hello")}
    with ServerThread(routes) as url:
        with pytest.raises(StatusFetchError, match="not JSON"):
            fetch_status(url)
    with ServerThread({}) as url:
        with pytest.raises(StatusFetchError, match="HTTP 404"):
            fetch_status(url)


def test_fetch_status_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)                          # accepts, never answers
    try:
        port = listener.getsockname()[1]
        with pytest.raises(StatusFetchError, match=f"127.0.0.1:{port}"):
            fetch_status(f"http://127.0.0.1:{port}", timeout=0.3)
    finally:
        listener.close()


def test_format_config_zones() -> None:
    """`router status` lists the zones config sync holds: checksum, files, size, age."""
    doc = dict(SAMPLE, config_zones=[
        {"zone": "agent1", "checksum": "0123456789abcdef0123", "files": 2, "bytes": 20480,
         "timestamp": NOW - 90, "age_seconds": 90.0, "authoritative": False},
        {"zone": "global-templates", "checksum": None, "files": "x", "bytes": None}])
    text = format_status(doc, now=NOW)
    section = text[text.index("Config zones (2)"):]
    assert "agent1" in section and "0123456789abcdef" in section
    assert "0123456789abcdef0123" not in section            # the checksum is shortened
    assert "global-templates" in section
    assert "Config zones" not in format_status(SAMPLE, now=NOW)  # nothing held: no section
