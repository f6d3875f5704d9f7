from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import orjson
import pytest
import uvloop

from router.ops.exposition import metrics_route
from router.ops.http import StatusServer, WithHeaders, json_response, text_response
from router.ops.metrics import family

TIMEOUT = 10.0

LOOPS = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request) -> Callable[[Awaitable], object]:
    """Run a coroutine on a fresh asyncio or uvloop loop, with a hard timeout."""
    factory = LOOPS[request.param]

    def runner(coro):
        async def bounded():
            return await asyncio.wait_for(coro, TIMEOUT)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


# --------------------------------------------------------------------------- helpers


class Boom(RuntimeError):
    pass


def make_routes(calls: list | None = None):
    def status(query):
        if calls is not None:
            calls.append(query)
        return json_response({"ok": True, "query": query}, query=query)

    def metrics(query):
        return text_response("# HELP x y\n# TYPE x gauge\nx 1\n")

    def boom(query):
        raise Boom("handler exploded")

    def bad_type(query):
        return 200, "text/plain", 12345

    return {"/v1/status": status, "/metrics": metrics, "/boom": boom, "/badtype": bad_type}


async def start(**kwargs) -> StatusServer:
    server = StatusServer(kwargs.pop("routes", None) or make_routes(), **kwargs)
    await server.start("127.0.0.1", 0)
    assert server.port and server.port > 0
    return server


async def connect(server: StatusServer):
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False
                        ) -> tuple[int, dict[str, str], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    version, code, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    length = int(headers["content-length"])
    body = b"" if head else await reader.readexactly(length)
    return int(code), headers, body


async def request(server: StatusServer, raw: bytes, *, head: bool = False):
    reader, writer = await connect(server)
    try:
        writer.write(raw)
        return await read_response(reader, head=head)
    finally:
        writer.close()


async def assert_closed(reader: asyncio.StreamReader, within: float = 3.0) -> None:
    try:
        data = await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return
    assert data == b""


# --------------------------------------------------------------------------- tests


def test_get_and_keep_alive(run) -> None:
    calls: list = []

    async def main():
        server = await start(routes=make_routes(calls))
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /v1/status?a=1&b=x%20y HTTP/1.1\r\nHost: t\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 200
            assert headers["content-type"] == "application/json"
            assert headers["connection"] == "keep-alive"
            assert orjson.loads(body) == {"ok": True, "query": {"a": "1", "b": "x y"}}
            assert b"\n  " not in body
            # Second request on the same connection, pretty printed.
            writer.write(b"GET /v1/status?pretty=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 200
            assert b'\n  "ok": true' in body
            # And a third one on another path.
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 200
            assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert body == b"# HELP x y\n# TYPE x gauge\nx 1\n"
            writer.close()
            assert len(calls) == 2
        finally:
            await server.close()

    run(main())


def test_pipelined_requests(run) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            assert (await read_response(reader))[0] == 404
            code, headers, body = await read_response(reader, head=True)
            assert code == 200 and headers["content-length"] == "30"
            code, headers, body = await read_response(reader)
            assert code == 200 and headers["connection"] == "close"
            await assert_closed(reader)
            writer.close()
        finally:
            await server.close()

    run(main())


def test_connection_close_honoured(run) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            code, headers, _ = await read_response(reader)
            assert code == 200 and headers["connection"] == "close"
            await assert_closed(reader)
            writer.close()
            # HTTP/1.0 closes by default, keeps alive on request.
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            code, headers, _ = await read_response(reader)
            assert headers["connection"] == "close"
            await assert_closed(reader)
            writer.close()
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            code, headers, _ = await read_response(reader)
            assert headers["connection"] == "keep-alive"
            writer.write(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            writer.close()
        finally:
            await server.close()

    run(main())


def test_head(run) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n")
            _, get_headers, get_body = await read_response(reader)
            writer.write(b"HEAD /v1/status HTTP/1.1\r\nHost: t\r\n\r\n")
            code, headers, body = await read_response(reader, head=True)
            assert code == 200
            assert headers["content-length"] == str(len(get_body))
            assert headers["content-type"] == get_headers["content-type"]
            # No body was sent: the next response starts right away.
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            code, _, body = await read_response(reader)
            assert code == 200 and body.startswith(b"# HELP")
            writer.close()
        finally:
            await server.close()

    run(main())


def test_not_found(run) -> None:
    async def main():
        server = await start()
        try:
            code, headers, body = await request(
                server, b"GET /v2/nothing?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert code == 404
            assert headers["content-type"] == "application/json"
            assert "error" in orjson.loads(body)
            assert "/v2/nothing" in orjson.loads(body)["error"]
            # A trailing slash still finds the route.
            code, _, _ = await request(server, b"GET /v1/status/ HTTP/1.1\r\nHost: t\r\n\r\n")
            assert code == 200
            # Absolute-form target.
            code, _, _ = await request(server,
                                       b"GET http://h:1/metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert code == 200
        finally:
            await server.close()

    run(main())


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
def test_method_not_allowed(run, method) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(method + b" /v1/status HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 405
            assert headers["allow"] == "GET, HEAD"
            assert "error" in orjson.loads(body)
            # Without a body the connection stays usable.
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            writer.close()
        finally:
            await server.close()

    run(main())


def test_request_with_body_closes(run) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"POST /v1/status HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            code, headers, _ = await read_response(reader)
            assert code == 405 and headers["connection"] == "close"
            await assert_closed(reader)
            writer.close()
        finally:
            await server.close()

    run(main())


def test_oversized_header_431(run) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n")
            for i in range(20):
                writer.write(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000))
            code, headers, body = await read_response(reader)
            assert code == 431
            assert headers["connection"] == "close"
            assert "error" in orjson.loads(body)
            await assert_closed(reader)
            writer.close()
            # Complete but too large head: 431 as well.
            big = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX: " + b"b" * 17000 + b"\r\n\r\n"
            code, _, _ = await request(server, big)
            assert code == 431
            # Just under the limit is fine.
            ok = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX: " + b"b" * 16000 + b"\r\n\r\n"
            code, _, _ = await request(server, ok)
            assert code == 200
        finally:
            await server.close()

    run(main())


@pytest.mark.parametrize("raw", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET  /  HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET relative HTTP/1.1\r\n\r\n",
])
def test_garbage_400(run, raw) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(raw)
            code, headers, body = await read_response(reader)
            assert code == 400
            assert "error" in orjson.loads(body)
            await assert_closed(reader)
            writer.close()
            # The server still works.
            assert (await request(server, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"))[0] == 200
        finally:
            await server.close()

    run(main())


def test_handler_exception_500(run, caplog) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 500
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body)["error"]
            # Same connection keeps working.
            writer.write(b"GET /badtype HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 500
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            writer.close()
            # New connections too.
            assert (await request(server, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"))[0] == 200
            assert server.errors_total == 2
        finally:
            await server.close()

    with caplog.at_level(logging.ERROR, logger="router.status"):
        run(main())
    records = [r for r in caplog.records if r.name == "router.status"]
    assert records and records[0].exc_info is not None
    assert records[0].exc_info[0] is Boom
    assert "/boom" in records[0].getMessage()


def test_slow_client_closed_after_deadline(run) -> None:
    async def main():
        server = await start(header_timeout=0.3)
        try:
            loop = asyncio.get_running_loop()
            reader, writer = await connect(server)
            started = loop.time()
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: slow")   # never finished
            await asyncio.sleep(0.1)
            writer.write(b"\r\nX-A: b")                               # dripping bytes
            await assert_closed(reader, within=3.0)
            elapsed = loop.time() - started
            assert 0.25 <= elapsed < 2.5
            writer.close()
            assert server.timeouts_total == 1
            # An idle keep-alive connection is closed by the same deadline.
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            await assert_closed(reader, within=3.0)
            writer.close()
            # A silent connection as well.
            reader, writer = await connect(server)
            await assert_closed(reader, within=3.0)
            writer.close()
            assert server.timeouts_total == 3
        finally:
            await server.close()

    run(main())


def test_too_many_clients_503(run) -> None:
    async def main():
        server = await start()
        assert server.max_clients == 64
        conns = []
        try:
            for _ in range(64):
                conns.append(await connect(server))
            # Make sure the server has seen every one of them.
            r, w = conns[-1]
            w.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(r))[0] == 200
            assert server.client_count == 64

            code, headers, body = await request(server, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert code == 503
            assert headers["connection"] == "close"
            assert "error" in orjson.loads(body)

            # Existing clients are still served.
            r, w = conns[0]
            w.write(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(r))[0] == 200

            # Once one leaves, a new client gets in.
            r, w = conns.pop()
            w.close()
            for _ in range(200):
                if server.client_count < 64:
                    break
                await asyncio.sleep(0.01)
            assert (await request(server, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"))[0] == 200
        finally:
            for _, w in conns:
                w.close()
            await server.close()

    run(main())


def test_far_over_limit_closed_without_answer(run) -> None:
    async def main():
        server = await start(max_clients=2, header_timeout=5.0)
        conns = []
        try:
            for _ in range(4):                    # 2 served + 2 waiting for their 503
                conns.append(await connect(server))
            r, w = conns[-1]
            w.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(r))[0] == 503
            conns.pop()
            r, w = await connect(server)          # 2 served + 1 rejected pending + this
            conns.append((r, w))
            r, w = await connect(server)          # beyond twice the limit: dropped at once
            await assert_closed(r)
            w.close()
        finally:
            for _, w in conns:
                w.close()
            await server.close()

    run(main())


def test_unread_large_response_is_aborted(run) -> None:
    big = b"x" * (64 * 1024 * 1024)

    async def main():
        server = await start(routes={"/big": lambda q: (200, "text/plain", big)},
                             header_timeout=0.3)
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            # abort() reports connection_lost a loop step later: wait for both.
            for _ in range(1000):
                if server.timeouts_total and not server.client_count:
                    break
                await asyncio.sleep(0.01)
            assert server.timeouts_total == 1
            assert server.client_count == 0
            writer.close()
        finally:
            await server.close()

    run(main())


def test_close_drops_clients_and_port(run) -> None:
    async def main():
        server = await start()
        port = server.port
        assert server.sockets
        reader, writer = await connect(server)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await server.close()
        await assert_closed(reader)
        writer.close()
        assert server.port is None and server.sockets == ()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.close()                      # idempotent

    run(main())


def test_eof_after_request_still_answered(run) -> None:
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            writer.write_eof()
            code, _, body = await read_response(reader)
            assert code == 200 and body
            await assert_closed(reader)
            writer.close()
        finally:
            await server.close()

    run(main())


def test_metrics_route_negotiates_openmetrics(run) -> None:
    scrapes = []

    def source():
        scrapes.append(1)
        return [family("router_check_results_total", [({}, len(scrapes))])]

    async def main():
        server = await start(routes={"/metrics": metrics_route(source)})
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 200
            assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert body.endswith(b"\nrouter_check_results_total 1.0\n")
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n"
                         b"Accept: application/openmetrics-text;version=1.0.0;q=0.5,"
                         b"text/plain;version=0.0.4;q=0.3\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 200
            assert headers["content-type"].startswith(
                "application/openmetrics-text; version=1.0.0; charset=utf-8")
            assert b"# TYPE router_check_results counter\n" in body
            assert body.endswith(b"router_check_results_total 2.0\n# EOF\n")
            writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n"
                         b"Accept: application/openmetrics-text\r\n\r\n")
            code, headers, _ = await read_response(reader, head=True)
            assert code == 200 and headers["content-type"].startswith(
                "application/openmetrics-text")
            writer.close()
        finally:
            await server.close()

    run(main())


def test_scrape_releases_each_family_once_encoded() -> None:
    """A scrape converts one family at a time and lets go of it (at 5 000 endpoints,
    converting every family before encoding made a scrape's peak 40 MB above the RSS)."""
    import gc
    import weakref

    from router.ops.exposition import _Snapshot

    class Labels(dict):                      # a dict that a weak reference can follow
        pass

    labels = [Labels(endpoint=f"a{i}") for i in range(3)]
    refs = [weakref.ref(x) for x in labels]
    snapshot = _Snapshot([family("router_bytes_received_total", [(x, i)])
                          for i, x in enumerate(labels)])
    del labels
    collected = snapshot.collect()
    first = next(collected)
    assert [s.labels for s in first.samples] == [{"endpoint": "a0"}]
    del first
    gc.collect()
    assert refs[0]() is None                 # converted, encoded and released
    assert refs[1]() is not None and refs[2]() is not None   # not converted yet
    assert [m.samples[0].labels["endpoint"] for m in collected] == ["a1", "a2"]
    gc.collect()
    assert all(r() is None for r in refs)
    assert list(snapshot.collect()) == []    # one scrape's families, encoded once


def test_with_headers_handler(run) -> None:
    seen = []

    def echo(query, headers):
        seen.append((query, headers.get("x-probe"), headers.get("X-PROBE")))
        return json_response({"ok": True})

    async def main():
        server = await start(routes={"/echo": WithHeaders(echo)})
        try:
            code, _, _ = await request(
                server, b"GET /echo?a=1 HTTP/1.1\r\nHost: t\r\nX-Probe: yes\r\n\r\n")
            assert code == 200
        finally:
            await server.close()

    run(main())
    assert seen == [({"a": "1"}, "yes", "yes")]
    assert WithHeaders(echo)({"b": "2"})[0] == 200      # still a plain handler(query)
    assert seen[-1] == ({"b": "2"}, None, None)


def test_http11_request_without_host_400(run) -> None:
    """aiohttp's parser follows RFC 9112 3.2: an HTTP/1.1 request must name its Host
    (the hand-written parser accepted it; every real client sends one)."""
    async def main():
        server = await start()
        try:
            reader, writer = await connect(server)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            code, headers, body = await read_response(reader)
            assert code == 400 and headers["connection"] == "close"
            assert "Host" in orjson.loads(body)["error"]
            await assert_closed(reader)
            writer.close()
            # HTTP/1.0 needs none, and is answered as HTTP/1.1 (read_response checks).
            code, headers, _ = await request(server, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert code == 200 and headers["connection"] == "close"
            assert server.bad_requests_total == 1
        finally:
            await server.close()

    run(main())


# --------------------------------------------------------------------------- helpers


def test_json_response() -> None:
    status, ctype, body = json_response({"a": [1, 2], "s": {3}}, 201)
    assert status == 201 and ctype == "application/json"
    assert orjson.loads(body) == {"a": [1, 2], "s": [3]}
    assert body.endswith(b"\n") and b"\n " not in body
    _, _, pretty = json_response({"a": 1}, query={"pretty": "1"})
    assert pretty == b'{\n  "a": 1\n}\n'
    _, _, plain = json_response({"a": 1}, query={"pretty": "0"})
    assert plain == b'{"a":1}\n'
    assert json_response({"a": 1}, pretty=True)[2] == pretty


def test_text_response() -> None:
    assert text_response("h\u00e9") == (
        200, "text/plain; version=0.0.4; charset=utf-8", "h\u00e9".encode())
    assert text_response("x", "text/html", 404) == (404, "text/html", b"x")
