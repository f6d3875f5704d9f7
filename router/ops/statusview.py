"""The human side of ``router status``: fetch ``/v1/status`` and format it as text.

:func:`fetch_status` is a blocking urllib GET (the CLI runs it outside any event loop);
:func:`format_status` turns the document (schema in ``docs/status-api.md``) into aligned
plain-text sections. The formatter never trusts the document: missing sections or keys
(an older node), ``None`` values and values of an unexpected type print as ``-`` or as
their text, and control characters in names are replaced so a hostile peer name cannot
drive the terminal.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Final, Iterable, Sequence, TypeGuard, TypeVar

from router.errors import RouterError

__all__ = ["StatusFetchError", "fetch_status", "format_status", "status_url"]

DASH: Final = "-"

_T = TypeVar("_T")


class StatusFetchError(RouterError):
    """The status listener could not be reached or did not answer with a status document."""


# --------------------------------------------------------------------------- fetching


def status_url(url: str) -> str:
    """The ``/v1/status`` address for a base URL (``host:port`` gets ``http://``)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    base = url.rstrip("/")
    if base.endswith("/v1/status"):
        return base
    return base + "/v1/status"


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``{url}/v1/status`` and return the decoded document.

    Raises :class:`StatusFetchError` (a :class:`RouterError`) naming the URL and the cause
    when the listener is unreachable, answers with an HTTP error, or sends something that
    is not a JSON object.
    """
    target = status_url(url)
    request = urllib.request.Request(target, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise StatusFetchError(f"{target}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise StatusFetchError(f"cannot reach status listener at {target}: {text}") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # timeouts, resets, an invalid URL; an answer cut short (the node stopped while
        # writing it) or not HTTP at all (--url at another service): review
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or
                                                                            type(exc).__name__)
        raise StatusFetchError(f"cannot reach status listener at {target}: {text}") from exc
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise StatusFetchError(f"{target}: response is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise StatusFetchError(f"{target}: response is not a JSON object")
    return doc


# --------------------------------------------------------------------------- formatting

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = _CONTROL.sub("?", str(value))
    return text if text else DASH


def _is_num(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any) -> str:
    if _is_num(value):
        return f"{int(value):d}" if value == value and abs(value) != float("inf") else str(value)
    return _text(value)


def _float(value: Any, digits: int = 2) -> str:
    if _is_num(value):
        return f"{value:.{digits}f}"
    return _text(value)


def _yes_no(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "y" if value else "n"
    return _text(value)


def _bytes(value: Any) -> str:
    if not _is_num(value):
        return _text(value)
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(value)  # pragma: no cover


def _error_count(errors: Any) -> Any:
    """A writer's ``errors`` (``{reason: count}``) summed; anything else shown as it is
    (a document from another version: it crashed ``router status``; review)."""
    if isinstance(errors, dict):
        return sum(v for v in errors.values() if _is_num(v))
    return errors


def _duration(seconds: Any) -> str:
    if not _is_num(seconds) or seconds != seconds or seconds in (float("inf"), -float("inf")):
        return _text(seconds)
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h{minutes}m"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _age(ts: Any, now: float) -> str:
    """How long ago ``ts`` was, e.g. ``3m12s``; ``-`` for None."""
    if not _is_num(ts):
        return _text(ts)
    return _duration(now - ts)


def _when(ts: Any) -> str:
    if not _is_num(ts):
        return _text(ts)
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return str(ts)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]],
           right: Sequence[bool]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    result = [line(headers), line(["-" * w for w in widths])]
    result.extend(line(r) for r in rows)
    return result


def _section(doc: dict[str, Any], key: str, kind: type[_T]) -> _T:
    value = doc.get(key)
    return value if isinstance(value, kind) else kind()


def _dicts(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


def _kv_lines(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"  {k + ':':<{width + 1}} {v}" for k, v in pairs]


def format_status(doc: dict[str, Any], *, now: float | None = None) -> str:
    """A readable multi-section text for a ``/v1/status`` document.

    Sections: node line, zones table, endpoints table, the zones config sync holds (when
    there are any), connections and totals, process.
    ``now`` (Unix time, default the current time) is used for ages ("since").
    """
    if now is None:
        now = time.time()
    if not isinstance(doc, dict):
        doc = {}
    out: list[str] = []

    # -- node
    node = _section(doc, "node", dict)
    uptime = node.get("uptime")
    if not _is_num(uptime) and _is_num(node.get("started")):
        uptime = now - node["started"]
    out.append(
        f"Node {_text(node.get('name'))}  zone {_text(node.get('zone'))}  "
        f"role {_text(node.get('role'))}  version {_text(node.get('version'))}")
    started = node.get("started")
    out.append(
        f"  uptime {_duration(uptime) if uptime is not None else DASH}"
        + (f" (since {_when(started)})" if _is_num(started) else "")
        + f"  listen {_text(node.get('listen'))}"
        + f"  status {_text(node.get('status_listen'))}")

    # -- zones
    zones = _dicts(doc.get("zones"))
    out.append("")
    out.append(f"Zones ({len(zones)})")
    if zones:
        rows = []
        for z in zones:
            relation = z.get("relation")
            if relation is None and z.get("global") is True:
                relation = "global"
            endpoints = z.get("endpoints")
            if isinstance(endpoints, list):
                eps = ", ".join(_text(e) for e in endpoints) or DASH
            else:
                eps = _text(endpoints)
            connected = DASH if z.get("global") is True and "connected" not in z \
                else _yes_no(z.get("connected"))
            rows.append([_text(z.get("name")), _text(relation), _text(z.get("parent")),
                         connected, eps])
        out.extend("  " + line for line in _table(
            ["ZONE", "RELATION", "PARENT", "CONN", "ENDPOINTS"], rows,
            [False, False, False, False, False]))
    else:
        out.append("  (none)")

    # -- endpoints
    endpoints = _dicts(doc.get("endpoints"))
    out.append("")
    connected_count = sum(1 for e in endpoints if e.get("connected") is True)
    out.append(f"Endpoints ({connected_count}/{len(endpoints)} connected)")
    if endpoints:
        rows = []
        for e in endpoints:
            rows.append([
                _text(e.get("name")),
                _text(e.get("zone")),
                _text(e.get("relation")),
                _yes_no(e.get("connected")),
                _text(e.get("direction")),
                _age(e.get("connected_since"), now),
                _float(e.get("messages_received_per_second")),
                _float(e.get("messages_sent_per_second")),
                _bytes(e.get("send_queue_bytes")),
                _int(e.get("refused")),
            ])
        out.extend("  " + line for line in _table(
            ["ENDPOINT", "ZONE", "RELATION", "CONN", "DIR", "SINCE", "IN/S", "OUT/S",
             "QUEUE", "REFUSED"], rows,
            [False, False, False, False, False, True, True, True, True, True]))
    else:
        out.append("  (none)")

    # -- config sync (only when the node holds zone configuration)
    held = _dicts(doc.get("config_zones"))
    if held:
        out.append("")
        out.append(f"Config zones ({len(held)})")
        out.extend(_table(
            ["ZONE", "CHECKSUM", "FILES", "SIZE", "AGE"],
            [[_text(z.get("zone")), _text(z.get("checksum"))[:16], _int(z.get("files")),
              _bytes(z.get("bytes")),
              _duration(z["age_seconds"]) if _is_num(z.get("age_seconds")) else DASH]
             for z in held],
            [False, False, True, True, True]))

    # -- result writers (only with [[writers]])
    writers = doc.get("writers")
    if isinstance(writers, dict) and writers:
        out.append("")
        out.append(f"Writers ({len(writers)})")
        out.extend(_table(
            ["WRITER", "TYPE", "ACTIVE", "WRITTEN", "BACKLOG", "LAG", "EVICTED", "ERRORS",
             "LAST ERROR"],
            [[_text(name), _text(w.get("type")), _yes_no(w.get("active")),
              _int(w.get("written")), _int(w.get("backlog")),
              _duration(w["lag_seconds"]) if _is_num(w.get("lag_seconds")) else DASH,
              _int(w.get("evicted")),
              _int(_error_count(w.get("errors"))),
              _text(w.get("last_error") or DASH)[:60]]
             for name, w in sorted(writers.items()) if isinstance(w, dict)],
            [False, False, False, True, True, True, True, True, False]))

    # -- totals
    conns = _section(doc, "connections", dict)
    totals = _section(doc, "totals", dict)
    out.append("")
    out.append("Totals")
    pairs = [
        ("connections",
         f"{_int(conns.get('established'))} established, "
         f"{_int(conns.get('handshaking'))} handshaking, "
         f"{_int(conns.get('anonymous'))} anonymous"),
        ("messages received", _int(totals.get("messages_received"))),
        ("messages sent", _int(totals.get("messages_sent"))),
        ("messages refused", _int(totals.get("messages_refused"))),
        ("handshake failures", _int(totals.get("handshake_failures"))),
        ("check results", _int(totals.get("check_results"))),
    ]
    out.extend(_kv_lines(pairs))

    # -- process
    proc = _section(doc, "process", dict)
    rss = proc.get("rss_bytes")
    out.append("")
    out.append("Process")
    out.extend(_kv_lines([
        ("RSS", f"{rss / 1048576:.1f} MiB" if _is_num(rss) else _text(rss)),
        ("CPU", f"{proc['cpu_seconds']:.2f} s" if _is_num(proc.get("cpu_seconds"))
         else _text(proc.get("cpu_seconds"))),
        ("open fds", _int(proc.get("open_fds"))),
    ]))
    return "\n".join(out) + "\n"
