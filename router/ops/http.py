"""The status listener (``/metrics``, ``/v1/status``, ...) on aiohttp.

aiohttp's low-level server (:class:`aiohttp.web.Server` with a
:class:`aiohttp.web.RequestHandler` per connection: aiohttp's HTTP/1.1 parser, writer,
keep-alive and pipelining) listening through ``loop.create_server`` on the running loop, so
it shares the router's event loop (uvloop or asyncio) without threads. Route handlers are
plain synchronous callables ``handler(query) -> (status, content_type, body)`` (or
:class:`WithHeaders` for one that needs the request headers); they must be fast because
they run on the loop.

Limits (a status port must never hurt the router):

* only ``GET`` and ``HEAD``; any other method gets ``405`` with ``Allow: GET, HEAD``
  (a method aiohttp's parser does not know at all gets ``400``). The exception are the
  *action* routes (``actions``, e.g. ``/v1/actions/reload``): ``POST`` only, anything
  else gets ``405`` with ``Allow: POST``; their body is ignored, their handler may be a
  coroutine function, and a :class:`WithHeaders` one sees the request headers (the
  console's actions check ``Authorization``);
* a handler may answer a 4-tuple ``(status, content_type, body, headers)``: the headers
  are added and override the defaults (the console's files set ``Cache-Control``,
  ``ETag`` and a Content-Security-Policy instead of ``no-store``);
* request line plus headers at most ``max_header_bytes`` (16 KiB), complete or still
  arriving: ``431`` when larger; ``400`` for anything that is not an HTTP/1.0 or 1.1
  request (aiohttp's parser, strict: an HTTP/1.1 request without ``Host`` is one); error
  bodies are JSON, and both close the connection;
* the complete request head must arrive within ``header_timeout`` (10 s) of the moment the
  server starts waiting for it (connection accepted, or previous response written), else
  the connection is closed silently (slowloris, idle keep-alive connections);
* at most ``max_clients`` (64) connections are served at once; when they are all taken,
  the one that has waited longest for a request head that is still incomplete (for at
  least ``EVICT_AFTER``), or that has not read its response longest, is dropped for the
  newcomer (counted in ``evicted_total``), so clients that drip their headers a byte a
  second or never read what they asked for cannot lock scrapes out for
  ``header_timeout`` (issue 21); with none to drop, the newcomer gets ``503`` to its first
  request and is closed (beyond twice the limit connections are closed at once);
* keep-alive with ``Content-Length`` (HTTP/1.1 default, ``Connection: close`` honoured;
  HTTP/1.0 only with ``Connection: keep-alive``); every response says ``Connection:
  keep-alive`` or ``close`` and is an HTTP/1.1 response; pipelined requests are answered in
  order;
* a request with a body (``Content-Length`` > 0 or ``Transfer-Encoding``) is answered and
  the connection closed (no lingering read of the body);
* a client that half-closes gets the answers to its complete requests, then the close;
* a handler that raises gives ``500`` with a JSON error and a logged traceback;
* a client that does not read its response stalls only itself: a connection whose writing
  stays paused (transport buffer above its high-water mark) for ``header_timeout`` is
  aborted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable
from typing import Any, Callable, Mapping, cast

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from router.ops.metrics import MetricFamily, family

__all__ = [
    "StatusServer",
    "Handler",
    "HeadersHandler",
    "ActionHandler",
    "Route",
    "WithHeaders",
    "Response",
    "HeadersResponse",
    "json_response",
    "text_response",
    "PROMETHEUS_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
]

log = logging.getLogger("router.status")

#: A connection still without a complete request head this long after it started waiting
#: for one may be dropped for a newcomer when the listener is full: an honest client
#: sends its head in one packet, milliseconds after it connects.
EVICT_AFTER = 0.1

Response = tuple[int, str, bytes]
#: A response with extra headers (they override the defaults, e.g. ``Cache-Control``).
HeadersResponse = tuple[int, str, bytes, Mapping[str, str]]
Handler = Callable[[dict[str, str]], Response]
#: A handler that also sees the request headers; it may be a coroutine function when part
#: of its work must leave the event loop (``/metrics`` encodes in a worker thread).
HeadersHandler = Callable[[dict[str, str], Mapping[str, str]],
                          "Response | HeadersResponse | Awaitable[Response]"]

#: An action route's handler (``POST``): ``handler(query)``, possibly a coroutine function.
ActionHandler = Callable[[dict[str, str]],
                         "Response | HeadersResponse | Awaitable[Response]"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

_ALLOWED_METHODS = ("GET", "HEAD")
_ALLOW = ", ".join(_ALLOWED_METHODS)
_HTTP_VERSION = web.RequestKey("router_http_version", HttpVersion)
_MAX_HEADERS = 128                 # header lines per request


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


class WithHeaders:
    """A route whose handler also gets the request headers: ``func(query, headers)``
    (case-insensitive mapping). Called with the query alone it sees no headers."""

    __slots__ = ("func",)

    def __init__(self, func: HeadersHandler) -> None:
        self.func = func

    def __call__(self, query: dict[str, str]
                 ) -> Response | HeadersResponse | Awaitable[Response]:
        return self.func(query, {})


#: What a route maps to: a plain handler, or one that also sees the headers.
Route = Handler | WithHeaders


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message}, option=orjson.OPT_APPEND_NEWLINE)


def _response(status: int, content_type: str, body: bytes, keep_alive: bool,
              extra: Mapping[str, str] | None = None) -> web.Response:
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "no-store",
        "Connection": "keep-alive" if keep_alive else "close",
    }
    if extra:
        headers.update(extra)
    resp = web.Response(status=status, body=body, headers=headers)
    if not keep_alive:
        resp.force_close()
    return resp


class _HeadTooLarge(BadHttpMessage):
    """Raised into aiohttp's parse path: the request head exceeds ``max_header_bytes``."""


class _HeadLimit:
    """Stands in front of aiohttp's request parser (``RequestHandler._parser``, whose
    ``feed_data`` the connection calls with every chunk read; tests/test_status.py's 431
    tests fail should aiohttp stop doing so) to bound a whole request head in bytes,
    which aiohttp only bounds per line. It also tells the connection when heads complete.

    A head still arriving is measured by the bytes fed since the last complete head (body
    bytes of a request being received do not count); a complete head by its request line
    and header fields. Raising a :class:`BadHttpMessage` here takes aiohttp's own error
    path (an error response, then the connection closes).
    """

    __slots__ = ("_parser", "_conn", "_limit", "_pending", "_payload")

    def __init__(self, parser: Any, conn: _Connection, limit: int) -> None:
        self._parser = parser
        self._conn = conn
        self._limit = limit
        self._pending = 0
        self._payload: StreamReader | None = None

    def feed_data(self, data: bytes) -> Any:
        result = self._parser.feed_data(data)
        messages = result[0]
        if messages:
            limit = self._limit
            for message, _payload in messages:
                size = len(message.method) + len(message.path) + 14 + sum(
                    len(name) + len(value) + 4 for name, value in message.raw_headers)
                if size > limit:
                    raise _HeadTooLarge(f"request head of {size} bytes")
            self._pending = 0
            self._payload = messages[-1][1]
            self._conn.heads_parsed(len(messages))
        elif data and (self._payload is None or self._payload.is_eof()):
            self._pending += len(data)
            if self._pending > self._limit:
                raise _HeadTooLarge(f"incomplete request head of {self._pending} bytes")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


# --------------------------------------------------------------------------- connection


class _Connection(web.RequestHandler):
    """aiohttp's per-connection protocol, plus the listener's limits and counters."""

    def __init__(self, status: StatusServer, manager: web.Server,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            manager, loop=loop,
            # Our own head timer closes idle connections; aiohttp's keep-alive timer is
            # only a backstop behind it.
            keepalive_timeout=2 * status.header_timeout + 1.0,
            access_log=None,  # type: ignore[arg-type]  # None turns it off (documented)
            logger=log,
            max_line_size=status.max_header_bytes, max_field_size=status.max_header_bytes,
            max_headers=_MAX_HEADERS,
            lingering_time=0.0)
        self._status = status
        self._event_loop = loop
        self._parser = _HeadLimit(self._parser, self,  # type: ignore[assignment]
                                  status.max_header_bytes)
        self._head_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._queued = 0           # complete heads not handled yet
        self._busy = False         # a request is being answered
        self._eof = False          # the client half-closed
        self._peer: Any = None
        self.over_limit = False
        #: Loop time since when we wait for a request head (None: not waiting).
        self.waiting_since: float | None = None
        #: Loop time since when the client has not read our response (None: it reads).
        self.paused_since: float | None = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._peer = transport.get_extra_info("peername")
        status = self._status
        if len(status._clients) >= status.max_clients:
            status.evict_for_newcomer(self._event_loop.time(), status._clients)
        if len(status._clients) >= status.max_clients:
            if len(status._rejected) >= status.max_clients:
                # those waiting for their 503 with an incomplete head go first
                status.evict_for_newcomer(self._event_loop.time(), status._rejected)
            if len(status._rejected) >= status.max_clients:
                # Far over the limit: do not even answer.
                status.rejected_total += 1
                cast(asyncio.Transport, transport).abort()
                return
            self.over_limit = True
            status._rejected.add(self)
        else:
            status._clients.add(self)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self._status._clients.discard(self)
        self._status._rejected.discard(self)
        super().connection_lost(exc)

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio: bool | None
        # The client half-closed: answer what is complete, then close.
        self._eof = True
        if not self._busy and not self._queued:
            self._cancel_timers()
            return False        # nothing to answer: the transport closes
        return True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.paused_since is None:
            self.paused_since = self._event_loop.time()
        if self._stall_timer is None:
            self._stall_timer = self._event_loop.call_later(self._status.header_timeout,
                                                      self._on_write_stall)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused_since = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    # -- aiohttp hooks

    def heads_parsed(self, n: int) -> None:
        """Called by the parser guard: ``n`` request heads are complete."""
        self._queued += n
        self.waiting_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def request_started(self) -> None:
        """Called by the server's handler when it starts answering a request."""
        if self._queued:
            self._queued -= 1
        self._busy = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        self._busy = True          # also for aiohttp's own error responses
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._eof and not self._queued and not resp.prepared:
            resp.force_close()
            resp.headers["Connection"] = "close"
        try:
            result = await super().finish_response(request, resp, start_time)
        finally:
            self._busy = False
        if result[1] or self.transport is None:
            return result
        if self._eof and not self._queued:
            self.force_close()      # half-closed and everything answered
        elif result[0].keep_alive:
            self._arm_head_timer()
        return result

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """An error response aiohttp asks for (a request it could not parse, mostly):
        JSON like every other answer of the listener, and the connection closes."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error")
        server = self._status
        if isinstance(exc, (LineTooLong, _HeadTooLarge)) or (
                isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
            status, text = 431, "request header too large"
        elif status < 500:
            first = (str(message or exc or "").strip().splitlines() or [""])[0]
            text = f"malformed request: {first.rstrip(':')}" if first else "malformed request"
        else:
            text = f"internal error: {type(exc).__name__}" if exc else "internal error"
        if status >= 500:
            server.errors_total += 1
            log.error("status request from %s failed: %s", self._peer, text, exc_info=exc)
        else:
            server.bad_requests_total += 1
            log.debug("status client %s: %d %s (%s)", self._peer, status, text, exc)
        return _response(status, JSON_CONTENT_TYPE, _error_body(text), False)

    # -- timers

    def _arm_head_timer(self) -> None:
        self.waiting_since = self._event_loop.time()
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self._event_loop.call_later(self._status.header_timeout,
                                                 self._on_head_timeout)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._stall_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is not None and not self._busy and not self._queued:
            self._status.timeouts_total += 1
            log.debug("status client %s: no complete request within %.1f s, closing",
                      self._peer, self._status.header_timeout)
            transport.abort()

    def _on_write_stall(self) -> None:
        self._stall_timer = None
        transport = self.transport
        if transport is not None:
            self._status.timeouts_total += 1
            log.debug("status client %s: not reading its response, aborting", self._peer)
            transport.abort()


# --------------------------------------------------------------------------- server


class StatusServer:
    """HTTP/1.1 status server: ``routes`` maps a path to ``handler(query) -> response``.

    ``header_timeout``, ``max_clients`` and ``max_header_bytes`` are the limits described
    in the module docstring. Counters (``requests_total``, ``errors_total``,
    ``bad_requests_total``, ``timeouts_total``, ``rejected_total``) are plain ints for
    the node's own metrics.
    """

    def __init__(self, routes: Mapping[str, Route], *, header_timeout: float = 10.0,
                 max_clients: int = 64, max_header_bytes: int = 16 * 1024,
                 actions: Mapping[str, ActionHandler] | None = None) -> None:
        self.routes: Mapping[str, Route] = routes
        #: POST-only routes (``/v1/actions/...``).
        self.actions: Mapping[str, ActionHandler] = actions or {}
        self.header_timeout = header_timeout
        self.max_clients = max_clients
        self.max_header_bytes = max_header_bytes
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self._clients: set[_Connection] = set()
        self._rejected: set[_Connection] = set()
        self.requests_total = 0
        self.errors_total = 0
        self.bad_requests_total = 0
        self.timeouts_total = 0
        self.rejected_total = 0
        #: Connections with an incomplete head dropped for a newcomer (listener full).
        self.evicted_total = 0

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free port, see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("status server already started")
        loop = asyncio.get_running_loop()
        manager = web.Server(self._handle, request_factory=self._make_request, loop=loop)
        self._web = manager
        self._server = await loop.create_server(
            lambda: _Connection(self, manager, loop), host, port, reuse_address=True)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        if self._server is None:
            return ()
        return tuple(self._server.sockets or ())

    @property
    def port(self) -> int | None:
        """The bound port of the first listening socket (None before :meth:`start`)."""
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        return None

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def over_limit_count(self) -> int:
        """Connections over ``max_clients`` waiting for their request head to get a 503."""
        return len(self._rejected)

    def evict_for_newcomer(self, now: float, among: set[_Connection]) -> bool:
        """The listener is full: drop the connection of ``among`` (the served ones, or
        those waiting for their 503) that has stalled longest (at least ``EVICT_AFTER``):
        waiting for an incomplete request head, or not reading its response (such
        clients filled every slot for ``header_timeout`` at a time, a review); True
        when one was dropped."""
        victim: _Connection | None = None
        victim_since = now
        for conn in among:
            since = conn.paused_since
            if since is None and not conn._busy and not conn._queued:
                since = conn.waiting_since
            if since is None or now - since < EVICT_AFTER:
                continue
            if victim is None or since < victim_since:
                victim, victim_since = conn, since
        if victim is None:
            return False
        among.discard(victim)
        self.evicted_total += 1
        log.debug("status client %s: %s for %.1f s and the listener is full (%d clients): "
                  "dropped for a newcomer", victim._peer, "not reading its response"
                  if victim.paused_since is not None else "no complete request head",
                  now - victim_since, self.max_clients)
        victim._cancel_timers()
        if victim.transport is not None:
            victim.transport.abort()
        return True

    def metric_families(self) -> list[MetricFamily]:
        """The listener's own counters for ``/metrics``."""
        return [family("router_status_clients", [({}, len(self._clients))]),
                family("router_status_clients_evicted_total", [({}, self.evicted_total)]),
                family("router_status_timeouts_total", [({}, self.timeouts_total)]),
                family("router_status_rejected_total", [({}, self.rejected_total)])]

    async def close(self) -> None:
        """Stop listening and drop every open status connection."""
        server, self._server = self._server, None
        manager, self._web = self._web, None
        if server is None:
            return
        server.close()
        for conn in list(self._clients) + list(self._rejected):
            transport = conn.transport
            if transport is not None:
                transport.abort()
        self._clients.clear()
        self._rejected.clear()
        if manager is not None:
            await manager.shutdown(1.0)
        await server.wait_closed()

    # -- request handling

    def _make_request(self, message: RawRequestMessage, payload: StreamReader,
                      protocol: web.RequestHandler, writer: AbstractStreamWriter,
                      task: asyncio.Task[None]) -> web.BaseRequest:
        # Answer every request as HTTP/1.1 (aiohttp would echo the request's version, also
        # HTTP/1.0 for a request it could not parse); the request's own version is kept
        # for the version check.
        version = message.version
        if version != HttpVersion11:
            message = message._replace(version=HttpVersion11)
        request = web.BaseRequest(message, payload, protocol, writer, task,
                                  asyncio.get_running_loop())
        request[_HTTP_VERSION] = version
        return request

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        conn = request.protocol
        if isinstance(conn, _Connection):
            conn.request_started()
            if conn.over_limit:
                self.rejected_total += 1
                return _response(503, JSON_CONTENT_TYPE,
                                 _error_body("too many status clients"), False)
        if request.get(_HTTP_VERSION) not in (HttpVersion10, HttpVersion11):
            self.bad_requests_total += 1
            return _response(400, JSON_CONTENT_TYPE,
                             _error_body("unsupported protocol version"), False)
        self.requests_total += 1
        keep_alive = request.keep_alive and not request.body_exists
        method = request.method
        path = request.path or "/"
        action = self.actions.get(path) or (self.actions.get(path.rstrip("/"))
                                            if len(path) > 1 else None)
        if action is not None:
            if method != "POST":
                return _response(405, JSON_CONTENT_TYPE,
                                 _error_body(f"method {method} not allowed"), keep_alive,
                                 {"Allow": "POST"})
            return await self._run_action(action, path, request, keep_alive)
        if method not in _ALLOWED_METHODS:
            return _response(405, JSON_CONTENT_TYPE,
                             _error_body(f"method {method} not allowed"), keep_alive,
                             {"Allow": _ALLOW})
        handler = self.routes.get(path)
        if handler is None and len(path) > 1 and path.endswith("/"):
            handler = self.routes.get(path.rstrip("/"))
        if handler is None:
            return _response(404, JSON_CONTENT_TYPE, _error_body(f"not found: {path}"),
                             keep_alive)
        query = {key: value for key, value in request.query.items()}
        try:
            if isinstance(handler, WithHeaders):
                result = handler.func(query, request.headers)
                if inspect.isawaitable(result):
                    result = await result
            else:
                result = handler(query)
            # A 4-tuple carries extra response headers (the console's caching headers).
            status, ctype, body = result[:3]
            extra = result[3] if len(result) > 3 else None
            if isinstance(body, str):
                body = body.encode("utf-8")
            elif not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"handler returned a body of type {type(body).__name__}")
            status = int(status)
            if not 100 <= status <= 999:
                raise ValueError(f"handler returned status {status}")
            ctype = str(ctype)
        except Exception as exc:
            self.errors_total += 1
            log.exception("status handler for %s failed", path)
            return _response(500, JSON_CONTENT_TYPE,
                             _error_body(f"internal error: {type(exc).__name__}"), keep_alive)
        return _response(status, ctype, bytes(body), keep_alive, extra)

    async def _run_action(self, action: ActionHandler, path: str, request: web.BaseRequest,
                          keep_alive: bool) -> web.StreamResponse:
        conn = request.protocol
        log.info("status client %s: POST %s",
                 conn.transport.get_extra_info("peername") if conn.transport else "?", path)
        try:
            query = {key: value for key, value in request.query.items()}
            # An action that checks a token sees the request headers (WithHeaders).
            result = (action.func(query, request.headers) if isinstance(action, WithHeaders)
                      else action(query))
            if inspect.isawaitable(result):
                result = await result
            status, ctype, body = result[:3]
        except Exception as exc:
            self.errors_total += 1
            log.exception("status action %s failed", path)
            return _response(500, JSON_CONTENT_TYPE,
                             _error_body(f"internal error: {type(exc).__name__}"), keep_alive)
        return _response(int(status), str(ctype), bytes(body), keep_alive)
