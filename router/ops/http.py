"""A tiny HTTP/1.1 server for the status listener (``/metrics``, ``/v1/status``, ...).

Dependency-free and built on ``loop.create_server`` with an :class:`asyncio.Protocol`, so
it shares the router's event loop (uvloop or asyncio) without threads. Handlers are plain
synchronous callables ``handler(query) -> (status, content_type, body)``; they must be fast
because they run on the loop.

Limits (a status port must never hurt the router):

* only ``GET`` and ``HEAD``; anything else gets ``405`` with ``Allow: GET, HEAD``;
* request line plus headers at most ``max_header_bytes`` (16 KiB): ``431`` when larger,
  ``400`` for anything that is not an HTTP/1.x request; both close the connection;
* the complete request head must arrive within ``header_timeout`` (10 s) of the moment the
  server starts waiting for it (connection accepted, or previous response written), else
  the connection is closed silently (slowloris, idle keep-alive connections);
* at most ``max_clients`` (64) connections are served at once; one more gets ``503`` to
  its first request and is closed (beyond twice the limit connections are closed at once);
* keep-alive with ``Content-Length`` (HTTP/1.1 default, ``Connection: close`` honoured;
  HTTP/1.0 only with ``Connection: keep-alive``); pipelined requests are answered in order;
* a request with a body (``Content-Length`` > 0 or ``Transfer-Encoding``) is answered and
  the connection closed, the body is never read;
* a handler that raises gives ``500`` with a JSON error and a logged traceback;
* a client that does not read its response stalls only itself: reading pauses while the
  transport's write buffer is above its high-water mark, and a connection that stays
  stalled for ``header_timeout`` is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

__all__ = [
    "StatusServer",
    "Handler",
    "Response",
    "json_response",
    "text_response",
    "PROMETHEUS_CONTENT_TYPE",
]

log = logging.getLogger("router.status")

Response = tuple[int, str, bytes]
Handler = Callable[[dict[str, str]], Response]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

_REASONS = {
    200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Payload Too Large", 414: "URI Too Long", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

_ALLOWED_METHODS = ("GET", "HEAD")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/1\.([01])\Z")


# --------------------------------------------------------------------------- helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def json_response(obj: Any, status: int = 200, query: Mapping[str, str] | None = None,
                  *, pretty: bool = False) -> Response:
    """``(status, "application/json", body)`` encoded with orjson; indented with two
    spaces when ``pretty`` or when ``query`` has ``pretty=1`` (or ``true``/``yes``)."""
    opts = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    if pretty or (query is not None
                  and str(query.get("pretty", "")).lower() in ("1", "true", "yes")):
        opts |= orjson.OPT_INDENT_2
    return status, JSON_CONTENT_TYPE, orjson.dumps(obj, default=_json_default, option=opts)


def text_response(text: str, content_type: str = PROMETHEUS_CONTENT_TYPE,
                  status: int = 200) -> Response:
    """``(status, content_type, text encoded as UTF-8)``."""
    return status, content_type, text.encode("utf-8")


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message}, option=orjson.OPT_APPEND_NEWLINE)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- protocol


class _StatusProtocol(asyncio.Protocol):
    __slots__ = ("_server", "_loop", "_transport", "_buf", "_timer", "_over_limit",
                 "_closing", "_write_paused", "_peer")

    def __init__(self, server: StatusServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._over_limit = False
        self._closing = False
        self._write_paused = False
        self._peer: Any = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        self._peer = transport.get_extra_info("peername")
        server = self._server
        if len(server._clients) >= server.max_clients:
            if len(server._rejected) >= server.max_clients:
                # Far over the limit: do not even answer.
                server.rejected_total += 1
                transport.abort()
                self._closing = True
                return
            self._over_limit = True
            server._rejected.add(self)
        else:
            server._clients.add(self)
        self._arm(self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        self._server._clients.discard(self)
        self._server._rejected.discard(self)
        self._transport = None
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        self._process()

    def eof_received(self) -> bool | None:
        # The client half-closed: answer what is complete, then close.
        if not self._closing:
            self._process()
        self._close()
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()
            self._arm(self._on_write_stall)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            self._arm(self._on_header_timeout)
            self._process()

    # -- timers

    def _arm(self, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(self._server.header_timeout, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_header_timeout(self) -> None:
        self._timer = None
        if self._transport is not None and not self._closing:
            self._server.timeouts_total += 1
            log.debug("status client %s: no complete request within %.1f s, closing",
                      self._peer, self._server.header_timeout)
            self._closing = True
            self._transport.abort()

    def _on_write_stall(self) -> None:
        self._timer = None
        if self._transport is not None and not self._closing:
            self._server.timeouts_total += 1
            log.debug("status client %s: not reading its response, aborting", self._peer)
            self._closing = True
            self._transport.abort()

    # -- request handling

    def _process(self) -> None:
        server = self._server
        while not self._closing and not self._write_paused:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            sep = 4
            lf_end = buf.find(b"\n\n")
            if lf_end != -1 and (end == -1 or lf_end < end):
                end, sep = lf_end, 2
            if end == -1:
                if len(buf) > server.max_header_bytes:
                    self._fail(431, "request header too large")
                return
            if end + sep > server.max_header_bytes:
                self._fail(431, "request header too large")
                return
            head = bytes(buf[:end])
            del buf[:end + sep]
            try:
                method, target, keep_alive, has_body = self._parse_head(head)
            except _BadRequest as exc:
                self._fail(exc.status, exc.message)
                return
            self._cancel_timer()
            if has_body:
                keep_alive = False
            if self._over_limit:
                server.rejected_total += 1
                self._respond(503, JSON_CONTENT_TYPE,
                              _error_body("too many status clients"), False,
                              method == "HEAD")
                return
            status, ctype, body, extra = self._dispatch(method, target)
            self._respond(status, ctype, body, keep_alive, method == "HEAD", extra)
            if not keep_alive:
                return
            if not self._write_paused:
                self._arm(self._on_header_timeout)

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, bool, bool]:
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        # Tolerate empty lines before the request line (RFC 9112 2.2).
        while lines and not lines[0]:
            lines.pop(0)
        if not lines:
            raise _BadRequest(400, "empty request")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise _BadRequest(400, "malformed request line")
        raw_method, raw_target, raw_version = parts
        if not _TOKEN.match(raw_method):
            raise _BadRequest(400, "malformed method")
        version = _VERSION.match(raw_version)
        if version is None:
            raise _BadRequest(400, "unsupported protocol version")
        if (not raw_target or any(b <= 0x20 or b == 0x7F for b in raw_target)
                or not (raw_target[:1] == b"/" or raw_target == b"*"
                        or raw_target.startswith((b"http://", b"https://")))):
            raise _BadRequest(400, "malformed request target")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line or line[:1] in (b" ", b"\t"):
                raise _BadRequest(400, "malformed header line")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise _BadRequest(400, "malformed header line")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if key in headers and key in ("content-length", "host"):
                if headers[key] != text:
                    raise _BadRequest(400, f"conflicting {key} headers")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if version.group(1) == b"1":
            keep_alive = "close" not in tokens
        else:
            keep_alive = "keep-alive" in tokens
        has_body = "transfer-encoding" in headers
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                raise _BadRequest(400, "malformed Content-Length")
            has_body = has_body or int(length) > 0
        return raw_method.decode("ascii"), raw_target.decode("latin-1"), keep_alive, has_body

    def _dispatch(self, method: str, target: str
                  ) -> tuple[int, str, bytes, tuple[tuple[str, str], ...]]:
        server = self._server
        server.requests_total += 1
        if method not in _ALLOWED_METHODS:
            return (405, JSON_CONTENT_TYPE, _error_body(f"method {method} not allowed"),
                    (("Allow", ", ".join(_ALLOWED_METHODS)),))
        if target.startswith("/"):
            split = urlsplit(target)
        elif target.startswith(("http://", "https://")):
            split = urlsplit(target)
        else:
            return 400, JSON_CONTENT_TYPE, _error_body("malformed request target"), ()
        path = unquote(split.path) or "/"
        handler = server.routes.get(path)
        if handler is None and len(path) > 1 and path.endswith("/"):
            handler = server.routes.get(path.rstrip("/"))
        if handler is None:
            return 404, JSON_CONTENT_TYPE, _error_body(f"not found: {path}"), ()
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        try:
            status, ctype, body = handler(query)
            if isinstance(body, str):
                body = body.encode("utf-8")
            elif not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"handler returned a body of type {type(body).__name__}")
            status = int(status)
            if not 100 <= status <= 999:
                raise ValueError(f"handler returned status {status}")
            ctype = str(ctype)
        except Exception as exc:
            server.errors_total += 1
            log.exception("status handler for %s failed", path)
            return (500, JSON_CONTENT_TYPE,
                    _error_body(f"internal error: {type(exc).__name__}"), ())
        return status, ctype, bytes(body), ()

    def _respond(self, status: int, ctype: str, body: bytes, keep_alive: bool,
                 head_only: bool, extra: tuple[tuple[str, str], ...] = ()) -> None:
        transport = self._transport
        if transport is None:
            return
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines.extend(f"{k}: {v}" for k, v in extra)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head_only or not body:
            transport.write(head)
        else:
            transport.writelines((head, body))
        if not keep_alive:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        self._server.bad_requests_total += 1
        log.debug("status client %s: %d %s", self._peer, status, message)
        self._cancel_timer()
        self._respond(status, JSON_CONTENT_TYPE, _error_body(message), False, False)

    def _close(self) -> None:
        self._closing = True
        self._cancel_timer()
        self._buf.clear()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._write_paused:
                # Flushing could take forever; bound it by the stall timer.
                self._timer = self._loop.call_later(self._server.header_timeout,
                                                    self._abort)
            transport.close()

    def _abort(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.abort()


# --------------------------------------------------------------------------- server


class StatusServer:
    """HTTP/1.1 status server: ``routes`` maps a path to ``handler(query) -> response``.

    ``header_timeout``, ``max_clients`` and ``max_header_bytes`` are the limits described
    in the module docstring. Counters (``requests_total``, ``errors_total``,
    ``bad_requests_total``, ``timeouts_total``, ``rejected_total``) are plain ints for
    the node's own metrics.
    """

    def __init__(self, routes: Mapping[str, Handler], *, header_timeout: float = 10.0,
                 max_clients: int = 64, max_header_bytes: int = 16 * 1024) -> None:
        self.routes: Mapping[str, Handler] = routes
        self.header_timeout = header_timeout
        self.max_clients = max_clients
        self.max_header_bytes = max_header_bytes
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[_StatusProtocol] = set()
        self._rejected: set[_StatusProtocol] = set()
        self.requests_total = 0
        self.errors_total = 0
        self.bad_requests_total = 0
        self.timeouts_total = 0
        self.rejected_total = 0

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free port, see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("status server already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _StatusProtocol(self, loop), host, port, reuse_address=True)

    @property
    def sockets(self) -> tuple:
        if self._server is None:
            return ()
        return tuple(self._server.sockets or ())

    @property
    def port(self) -> int | None:
        """The bound port of the first listening socket (None before :meth:`start`)."""
        for sock in self.sockets:
            return sock.getsockname()[1]
        return None

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def close(self) -> None:
        """Stop listening and drop every open status connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for proto in list(self._clients) + list(self._rejected):
            transport = proto._transport
            if transport is not None:
                transport.abort()
        self._clients.clear()
        self._rejected.clear()
        await server.wait_closed()
