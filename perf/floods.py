"""Flooders: the hostile clients of issue 21 part 4, in a process of their own.

Each flood kind is an asyncio coroutine that returns what it saw, and the module runs as
``python -m perf.floods KIND --port P [...]``, printing that as one JSON line on stdout.
A process of its own because 10 000 connections are 10 000 descriptors on each side and
the container's hard ``RLIMIT_NOFILE`` (20 000 here) cannot hold both ends in one
process; it also keeps the flooders' CPU off the node's event loop. Used by
``tests/test_floods.py`` (functional: everyone is cut and counted, honest agents deliver)
and ``perf/bench_floods.py`` (honest agents' latency, quiet vs flood).

Kinds:

* ``idle``: ``n`` TCP connections that never finish the TLS handshake: they send nothing,
  or with ``--partial`` a TLS record header announcing a ClientHello that never comes
  (a handshake that started and stalls), spread over ``--sources`` source addresses
  127.0.0.x so that per-address caps alone do not make it trivial;
* ``slowloris``: ``n`` TLS handshakes without a client certificate (anonymous), then one
  byte a second of a netstring frame that never ends;
* ``churn``: ``--workers`` loops that open a connection and close it at once, as fast as
  they can, for ``--duration`` s (with ``--tls``: each finishes a TLS handshake first);
* ``slowheaders``: ``n`` connections to the *status* port that send an HTTP request head
  one byte a second.

Every kind holds its connections for at most ``--hold`` s and reports how many the node
closed (EOF or reset) and how long that took: the node, not the flooder, must end them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time
from typing import Any

__all__ = ["FLOOD_KINDS", "churn_flood", "idle_flood", "run_flood", "slow_headers_flood",
           "slowloris_flood"]

FLOOD_KINDS = ("idle", "slowloris", "churn", "slowheaders")
#: A TLS handshake record header announcing 512 bytes that never come.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00"
#: What a slowloris client drips, a byte a second: a netstring that never completes.
SLOW_FRAME = b'65536:{"jsonrpc":"2.0","method":"event::Heartbeat","params":{' + b" " * 64
SLOW_HEAD = b"GET /v1/status HTTP/1.1\r\nHost: flood\r\nX-Slow: " + b"a" * 64


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _sources(count: int) -> list[str]:
    return [f"127.0.0.{2 + k}" for k in range(max(1, count))]


def _summary(closed_at: list[float], opened: int, errors: list[str], started: float,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    closed = sorted(closed_at)
    return {"opened": opened, "closed_by_node": len(closed),
            "still_open": opened - len(closed),
            "closed_after_s_p50": round(closed[len(closed) // 2], 3) if closed else None,
            "closed_after_s_max": round(closed[-1], 3) if closed else None,
            "errors": len(errors), "first_errors": errors[:3],
            "took_s": round(time.monotonic() - started, 3), **(extra or {})}


def idle_flood(host: str, port: int, n: int, sources: int, hold: float,
               partial: bool = False, concurrency: int = 200) -> dict[str, Any]:
    """``n`` connections that never finish a handshake (see the module docstring).

    Plain non-blocking sockets and one epoll set, no asyncio: the flooder must cost as
    little CPU as it can, because on the bench's 2-core machine its CPU is taken from the
    node or from the honest agents that stamp results. Written with a coroutine and a
    timer per socket it spent 270 µs of CPU per connection (2.7 s for 10 000), more than
    the node it floods; this loop spends a fraction of that (perf/RESULTS.md, floods).
    At most ``concurrency`` connects are in flight at once, each given 15 s."""
    addrs = _sources(sources)
    sel = selectors.DefaultSelector()
    errors: list[str] = []
    closed_at: list[float] = []
    connecting: dict[socket.socket, float] = {}     # socket -> connect deadline
    watching = 0
    opened = 0
    started = 0
    t0 = time.monotonic()
    connected_s = 0.0

    def failed(sock: socket.socket, what: str) -> None:
        errors.append(what if len(errors) < 10 else "")
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(sock)
        sock.close()

    def watch(sock: socket.socket) -> None:
        nonlocal watching, opened
        opened += 1
        if partial:
            try:
                sock.send(PARTIAL_CLIENT_HELLO)
            except OSError:
                pass            # already closed by the node: the read below tells
        sel.register(sock, selectors.EVENT_READ, "open")
        watching += 1

    while True:
        now = time.monotonic()
        while started < n and len(connecting) < concurrency:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((addrs[started % len(addrs)], 0))
                code = sock.connect_ex((host, port))
            except OSError as exc:
                code = exc.errno or -1
            started += 1
            if code == 0:
                watch(sock)
            elif code in (errno.EINPROGRESS, errno.EAGAIN):
                connecting[sock] = now + 15.0
                sel.register(sock, selectors.EVENT_WRITE, "connecting")
            else:
                failed(sock, f"OSError: {os.strerror(code)}")
        if started >= n and not connecting and not connected_s:
            connected_s = now - t0
        if now - t0 >= hold or (started >= n and not connecting and not watching):
            break
        for key, _ in sel.select(0.2):
            sock = key.fileobj                                  # type: ignore[assignment]
            if key.data == "connecting":
                del connecting[sock]
                sel.unregister(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    failed(sock, f"OSError: {os.strerror(code)}")
                else:
                    watch(sock)
                continue
            try:
                gone = sock.recv(4096) == b""
            except BlockingIOError:
                continue
            except OSError:
                gone = True
            if gone:
                closed_at.append(time.monotonic() - t0)
                sel.unregister(sock)
                sock.close()
                watching -= 1
        for sock, deadline in list(connecting.items()):
            if deadline <= now:
                del connecting[sock]
                failed(sock, "TimeoutError: connect")
    for key in list(sel.get_map().values()):
        key.fileobj.close()                                     # type: ignore[union-attr]
    sel.close()
    return _summary(closed_at, opened, errors, t0,
                    {"kind": "idle", "partial": partial, "sources": len(addrs),
                     "connect_s": round(connected_s or time.monotonic() - t0, 3)})


def anonymous_context() -> ssl.SSLContext:
    """A TLS client without a certificate that trusts anything (an attacker's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def slowloris_flood(host: str, port: int, n: int, hold: float, sources: int = 4,
                          concurrency: int = 50) -> dict[str, Any]:
    """``n`` anonymous TLS sessions that each send one byte a second."""
    ctx = anonymous_context()
    addrs = _sources(sources)
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    t0 = time.monotonic()
    closed_at: list[float] = []
    handshakes = 0

    async def one(i: int) -> None:
        nonlocal handshakes
        try:
            async with sem:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname="node",
                    local_addr=(addrs[i % len(addrs)], 0)), 20)
            handshakes += 1
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if len(errors) < 10:
                errors.append(f"{type(exc).__name__}: {exc}")
            return
        k = 0
        try:
            while time.monotonic() - t0 < hold:
                writer.write(SLOW_FRAME[k % len(SLOW_FRAME):k % len(SLOW_FRAME) + 1])
                k += 1
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    continue
                if not data:
                    closed_at.append(time.monotonic() - t0)
                    return
        except (OSError, ssl.SSLError):
            closed_at.append(time.monotonic() - t0)
        finally:
            writer.transport.abort()

    await asyncio.gather(*(one(i) for i in range(n)))
    return _summary(closed_at, handshakes, errors, t0, {"kind": "slowloris"})


async def churn_flood(host: str, port: int, duration: float, workers: int = 20,
                      tls: bool = False, sources: int = 4) -> dict[str, Any]:
    """Open and close as fast as possible for ``duration`` s."""
    loop = asyncio.get_running_loop()
    ctx = anonymous_context() if tls else None
    addrs = _sources(sources)
    errors: list[str] = []
    opened = 0
    t0 = time.monotonic()

    async def worker(w: int) -> None:
        nonlocal opened
        while time.monotonic() - t0 < duration:
            try:
                if ctx is None:
                    sock = socket.socket()
                    sock.setblocking(False)
                    try:
                        sock.bind((addrs[w % len(addrs)], 0))
                        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 5)
                        opened += 1
                    finally:
                        sock.close()
                else:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(
                        host, port, ssl=ctx, server_hostname="node",
                        local_addr=(addrs[w % len(addrs)], 0)), 5)
                    opened += 1
                    writer.transport.abort()
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                if len(errors) < 10:
                    errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    took = time.monotonic() - t0
    return {"kind": "churn", "tls": tls, "opened": opened, "per_s": round(opened / took, 1),
            "errors": len(errors), "first_errors": errors[:3], "took_s": round(took, 3)}


async def slow_headers_flood(host: str, port: int, n: int, hold: float,
                             concurrency: int = 100) -> dict[str, Any]:
    """``n`` status-port clients that send a request head one byte a second."""
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    closed_at: list[float] = []
    opened = 0
    t0 = time.monotonic()

    async def one() -> None:
        nonlocal opened
        try:
            async with sem:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), 10)
            opened += 1
        except (OSError, TimeoutError) as exc:
            if len(errors) < 10:
                errors.append(f"{type(exc).__name__}: {exc}")
            return
        k = 0
        try:
            while time.monotonic() - t0 < hold:
                writer.write(SLOW_HEAD[k % len(SLOW_HEAD):k % len(SLOW_HEAD) + 1])
                k += 1
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    continue
                if not data or data.startswith(b"HTTP/1.1 503"):
                    closed_at.append(time.monotonic() - t0)
                    return
        except OSError:
            closed_at.append(time.monotonic() - t0)
        finally:
            writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(n)))
    return _summary(closed_at, opened, errors, t0, {"kind": "slowheaders"})


async def run_flood(args: argparse.Namespace) -> dict[str, Any]:
    if args.kind == "idle":
        return idle_flood(args.host, args.port, args.n, args.sources, args.hold,
                          partial=args.partial)
    if args.kind == "slowloris":
        return await slowloris_flood(args.host, args.port, args.n, args.hold, args.sources)
    if args.kind == "churn":
        return await churn_flood(args.host, args.port, args.duration, args.workers,
                                 tls=args.tls, sources=args.sources)
    if args.kind == "slowheaders":
        return await slow_headers_flood(args.host, args.port, args.n, args.hold)
    raise ValueError(f"unknown flood kind {args.kind!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf.floods", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("kind", choices=FLOOD_KINDS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=1000, help="connections (idle, slowloris, "
                   "slowheaders)")
    p.add_argument("--sources", type=int, default=20, help="source addresses 127.0.0.x")
    p.add_argument("--hold", type=float, default=30.0, help="give up waiting after, s")
    p.add_argument("--partial", action="store_true", help="idle: send a TLS record header")
    p.add_argument("--duration", type=float, default=5.0, help="churn: seconds")
    p.add_argument("--workers", type=int, default=20, help="churn: concurrent loops")
    p.add_argument("--tls", action="store_true", help="churn: finish a TLS handshake")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    raise_nofile()
    import uvloop
    result = uvloop.run(run_flood(args))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
