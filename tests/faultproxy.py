"""A fault-injecting TCP proxy for tests (issue 21 part 6), on 127.0.0.1.

``FaultProxy(upstream_port)`` listens on a free port and forwards every connection to the
upstream port, byte for byte, in both directions, applying the :class:`Fault` planned for
that connection (``plan``: the first connection gets ``plan[0]``, the second ``plan[1]``,
...; connections past the plan are forwarded clean, so the system under test can
recover). What a fault can do, per direction (``up``: client to upstream, ``down``: back):

* ``delay``: hold every chunk for that many seconds (order kept);
* ``bytewise``: deliver the first ``bytewise`` bytes one byte per write, a write per loop
  turn, so the receiver sees them in as many reads (TLS records and netstrings cut
  everywhere, the handshake included);
* ``stall_after`` / ``stall``: after that many bytes, forward nothing for ``stall``
  seconds (the connection stays open; long enough and the receiver's liveness timer
  must act);
* ``reset_after``: after that many bytes, reset both sides (``SO_LINGER`` 0: a TCP RST,
  no FIN), cutting a TLS record and a frame in the middle;
* ``partial``: with ``reset_after``: of the chunk that crosses the mark, write only the
  part up to the mark, then reset: the sender's kernel took the whole write, the receiver
  got part of it (a partial write the sender cannot see).

TCP never duplicates a segment to the application, so duplicates can only come from the
nodes' own replays: the tests check that every case ends with no loss and no duplicate.
The proxy runs in the test's event loop (``await proxy.start()``) or, for tests driving
threads and subprocesses (real Icinga 2), in a thread of its own
(:class:`ThreadedFaultProxy`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

__all__ = ["Fault", "FaultProxy", "ThreadedFaultProxy"]

CHUNK = 65536


@dataclass
class Fault:
    """What happens to one connection, per direction (see the module docstring)."""

    direction: str = "up"            # "up", "down" or "both"
    delay: float = 0.0
    bytewise: int = 0
    stall_after: int | None = None
    stall: float = 0.0
    reset_after: int | None = None
    partial: bool = False
    label: str = ""

    def applies(self, direction: str) -> bool:
        return self.direction in (direction, "both")


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0
    stalls: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    """The proxy; ``plan`` is consumed one :class:`Fault` per accepted connection."""

    def __init__(self, upstream_port: int, plan: list[Fault | None] | None = None,
                 upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.plan: list[Fault | None] = list(plan or [])
        self.stats = ProxyStats()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._pairs):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut_all(self) -> None:
        """Reset every connection now (a fault from outside the plan)."""
        for writer in list(self._pairs):
            _rst(writer)
        self.stats.resets += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        index = self.stats.connections
        self.stats.connections += 1
        fault = self.plan[index] if index < len(self.plan) else None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        self._pairs.update((writer, up_writer))
        done = asyncio.Event()

        def reset() -> None:
            self.stats.resets += 1
            _rst(writer)
            _rst(up_writer)
            done.set()

        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, "up", fault, reset)),
                 asyncio.ensure_future(self._pump(up_reader, writer, "down", fault, reset))]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pairs.difference_update((writer, up_writer))
        for w in (writer, up_writer):
            w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str, fault: Fault | None, reset) -> None:
        f = fault if fault is not None and fault.applies(direction) else None
        sent = 0
        stalled = False
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if f is not None and f.delay:
                    await asyncio.sleep(f.delay)
                if f is not None and f.reset_after is not None \
                        and sent + len(data) >= f.reset_after:
                    if f.partial:
                        writer.write(data[:max(0, f.reset_after - sent)])
                        await writer.drain()
                    reset()
                    return
                if f is not None and f.stall_after is not None and not stalled \
                        and sent + len(data) >= f.stall_after:
                    stalled = True
                    self.stats.stalls += 1
                    await asyncio.sleep(f.stall)
                if f is not None and sent < f.bytewise:
                    cut = min(len(data), f.bytewise - sent)
                    for k in range(cut):
                        writer.write(data[k:k + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                    if cut < len(data):
                        writer.write(data[cut:])
                else:
                    writer.write(data)
                sent += len(data)
                self.stats.bytes[direction] += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            reset()


class ThreadedFaultProxy:
    """A :class:`FaultProxy` in a thread of its own with its own event loop, for tests
    that are not coroutines (real Icinga 2 subprocesses, ``RouterNode`` in its thread)."""

    def __init__(self, upstream_port: int, plan: list[Fault | None] | None = None) -> None:
        self.proxy = FaultProxy(upstream_port, plan)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def stats(self) -> ProxyStats:
        return self.proxy.stats

    def start(self) -> ThreadedFaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self

    def cut_all(self) -> None:
        self._loop.call_soon_threadsafe(self.proxy.cut_all)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
