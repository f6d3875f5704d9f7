"""The emulated peers of ``bench_relay.py``: its agents, their load process, its parent.

An :class:`Agent` is an asyncio stream over the loop's TLS transport; a load process
(:func:`load_worker`, multiprocessing spawn, uvloop) runs a share of them. The parent
(:class:`ParentProtocol`, in the main process) counts every CheckResult and parses every
``SAMPLE_EVERY``-th. ``router perf`` has its own agents (``perf/load.py``) and parent
(``perf/parent.py``).
"""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import orjson

from perf.measure import raise_nofile
from perf.wire import (
    HELLO,
    PACE_TICK,
    SAT,
    SERVICE,
    agent_name,
    client_context,
    log_position_frame,
    message_template,
    scan_frames,
    stamped_frames,
)
from perf.workers import close_agents, pipe_commands

__all__ = ["SAMPLE_EVERY", "Agent", "ParentProtocol", "load_worker"]

SAMPLE_EVERY = 64           # the parent parses every 64th CheckResult completely


class Agent:
    def __init__(self, name: str, port: int, ctx: ssl.SSLContext, template: bytes,
                 batch: int, counter: Any, sndbuf: int) -> None:
        self.name = name
        self.sndbuf = sndbuf
        self.port = port
        self.ctx = ctx
        self.template = template
        self.batch = batch
        self.counter = counter
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_us = 0
        self.error: str | None = None
        self.closed_by_peer = False
        self._read_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.sndbuf:
            # A fixed send buffer (no autotuning, which grows it to 4 MiB): what the agent
            # has written but the node has not read stays small, so the generator settles
            # at the node's pace instead of filling ~100 x 4 MiB of kernel buffers first.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
            sock, ("127.0.0.1", self.port)), 30)
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
            sock=sock, ssl=self.ctx, server_hostname=SAT), 30)
        self.writer.transport.set_write_buffer_limits(high=256 * 1024)
        self.writer.write(HELLO)
        self._read_task = asyncio.ensure_future(self._read_loop())

    async def _read_loop(self) -> None:
        assert self.reader is not None
        try:
            while True:
                data = await self.reader.read(262144)
                if not data:
                    break
                self.bytes_received += len(data)
        except (OSError, ssl.SSLError):
            pass
        self.closed_by_peer = True

    async def run(self, stop: asyncio.Event, rate: float, offset: float) -> None:
        """Send until ``stop``: flat out (``rate`` 0) or ``rate`` messages per second."""
        writer = self.writer
        assert writer is not None
        template, batch, counter = self.template, self.batch, self.counter
        last = self.last_us
        started = time.monotonic()
        if rate:
            await asyncio.sleep(offset)          # spread the agents over one tick
        try:
            while not stop.is_set():
                if rate:
                    due = int((time.monotonic() - started) * rate) - self.sent
                    if due <= 0:
                        await asyncio.sleep(PACE_TICK)
                        continue
                    batch = min(due, 4 * self.batch)
                data, last = stamped_frames(template, last, batch)
                writer.write(data)
                self.sent += batch
                self.bytes_sent += len(data)
                counter[0] += batch
                counter[1] += len(data)
                await writer.drain()
                await asyncio.sleep(0)          # fairness between the agents of a worker
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.last_us = last

    async def close(self) -> None:
        if self._read_task is not None:
            self._read_task.cancel()
        if self.writer is not None:
            try:
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 2)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001
                pass


def load_worker(cfg: dict[str, Any], conn: Any, counter: Any) -> None:
    """Entry point of a load process (multiprocessing, spawn)."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the main process stops us
    import uvloop
    uvloop.run(_worker(cfg, conn, counter))


async def _worker(cfg: dict[str, Any], conn: Any, counter: Any) -> None:
    commands = pipe_commands(conn, "close", lambda cmd: cmd == "close")
    ca, certs = Path(cfg["ca"]), Path(cfg["certs"])
    agents = []
    for i in cfg["agents"]:
        name = agent_name(i)
        ctx = client_context(ca, certs / f"{name}.crt", certs / f"{name}.key")
        agents.append(Agent(name, cfg["port"], ctx,
                            message_template(name, cfg["payload_bytes"]), cfg["batch"], counter,
                            cfg["sndbuf"]))
    sem = asyncio.Semaphore(16)

    async def connect(agent: Agent) -> None:
        async with sem:
            await agent.connect()

    results = await asyncio.gather(*(connect(a) for a in agents), return_exceptions=True)
    errors = [f"{a.name}: {r!r}" for a, r in zip(agents, results) if isinstance(r, BaseException)]
    conn.send(("connected", len(agents) - len(errors), errors))
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    while True:
        cmd = await commands.get()
        if cmd == "go":
            rate = cfg["rate_per_agent"]
            tasks = [asyncio.ensure_future(a.run(stop, rate, PACE_TICK * k / len(agents)))
                     for k, a in enumerate(agents) if a.writer is not None]
        elif cmd == "stop":
            stop.set()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            conn.send(("stopped", {
                "sent": sum(a.sent for a in agents),
                "bytes_sent": sum(a.bytes_sent for a in agents),
                "bytes_received": sum(a.bytes_received for a in agents),
                "per_agent_sent": {a.name: a.sent for a in agents},
                "errors": [f"{a.name}: {a.error}" for a in agents if a.error],
                "closed_by_peer": [a.name for a in agents if a.closed_by_peer],
            }))
        elif cmd == "close":
            stop.set()
            await close_agents(agents, conn)
            return


class ParentProtocol(asyncio.Protocol):
    """Endpoint ``master`` connected to the satellite: counts CheckResults, samples some."""

    def __init__(self, read_rate: float = 0.0) -> None:
        self.transport: asyncio.Transport | None = None
        #: --parent-rate: read at most this many messages per second (a slow master)
        self.read_rate = read_rate
        self._budget_start = time.monotonic()
        self._paused = False
        self.buf = bytearray()
        self.check_results = 0
        self.other = 0
        self.methods: collections.Counter[str] = collections.Counter()
        self.bytes = 0
        self.sampled = 0
        self.sample_hosts: collections.Counter[str] = collections.Counter()
        #: (arrival, seconds since the agent stamped execution_end) of the sampled messages
        self.latencies: list[tuple[float, float]] = []
        self.bad_samples: list[str] = []
        self.last_ts = 0.0
        self.last_arrival = 0.0
        self.connected = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(HELLO)
        self.connected.set_result(None)
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def _set_log_position(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(log_position_frame(self.last_ts))
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        self.buf += data
        self.other += scan_frames(self.buf, self.methods, self._check_result)
        if self.read_rate:
            self._throttle()

    def _check_result(self, buf: bytearray, start: int, end: int) -> None:
        self.check_results += 1
        self.last_arrival = time.monotonic()
        if self.check_results % SAMPLE_EVERY == 0:
            self._sample(bytes(buf[start:end]))

    def _throttle(self) -> None:
        allowed = (time.monotonic() - self._budget_start) * self.read_rate
        ahead = (self.check_results + self.other - allowed) / self.read_rate
        if ahead > 0.01 and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(ahead, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _sample(self, payload: bytes) -> None:
        now = time.time()
        try:
            msg = orjson.loads(payload)
            params = msg["params"]
            host = params["host"]
            self.sample_hosts[host] += 1
            if params.get("service") != SERVICE or not host.startswith("agent-"):
                self.bad_samples.append(payload[:200].decode(errors="replace"))
            self.latencies.append((time.monotonic(),
                                   now - float(params["cr"]["execution_end"])))
            self.last_ts = max(self.last_ts, float(msg.get("ts") or 0))
            self.sampled += 1
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            self.bad_samples.append(payload[:200].decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)
