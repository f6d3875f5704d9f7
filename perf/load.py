"""Load processes of ``router perf``: emulated agents that connect, send, churn, reconnect.

One load process (multiprocessing, spawn, uvloop) owns a share of the agents. It talks to
the main process over a pipe (commands ``connect``, ``go``, ``stop``, ``reconnect``,
``close``) and publishes live counters in a shared array (``C_*`` indices below), which the
main process reads for the progress display without a round trip.

Every agent has its own certificate (all agents may share one EC key: ``router perf``
issues N certificates for one key, which is much faster than N key generations) and its
own TLS session. The messages are ``event::CheckResult`` in the shape Icinga agents send
(``perf.wire.message_template``); ``cr.execution_end`` is the agent's wall clock at
the moment of writing (microseconds, strictly increasing per agent), so the parent reads
the end-to-end latency from it and ``(host, execution_end)`` identifies each result
exactly once.
"""

from __future__ import annotations

import asyncio
import random
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
    agent_name,
    client_context,
    message_template,
    netstring,
    stamped_frames,
)
from perf.workers import close_agents, pipe_commands

# indices of the shared counter array (one per load process)
C_SENT, C_BYTES, C_IDENTIFIED, C_CONNECTS, C_CONNECT_FAILURES, C_CLOSED_BY_PEER = range(6)
#: frames the agents received from the node after its first (commands down the chain)
C_RECEIVED = 6
N_COUNTERS = 7
#: storm: a session the node has not answered within this many seconds is redialled
IDENTIFY_TIMEOUT = 10.0
#: an idle agent's heartbeat, as Icinga's ApiListener sends it (every 20 s)
HEARTBEAT_INTERVAL = 20.0
HEARTBEAT = netstring(orjson.dumps({"jsonrpc": "2.0", "method": "event::Heartbeat",
                                    "params": {"timeout": 120.0}}))
#: how often an agent confirms what it received (Icinga's ApiListener timer, 5 s)
CONFIRM_INTERVAL = 5.0


class _AgentProtocol(asyncio.Protocol):
    """The agent's end of one TLS session, TLS done here on memory BIOs.

    A bare protocol over a plain TCP transport rather than asyncio streams over the loop's
    TLS transport: no StreamReader, no read task, no per-connection TLS transport object,
    no decoding of the node's certificate into a dict, so dialling 5 000 sessions costs
    the generator little beyond OpenSSL's handshake (the CPU it saves is the node's to
    use). It notes the node's first frame (the agent is identified) and does flow control.
    """

    __slots__ = ("_drain", "_frame", "_frame_rest", "_head", "_incoming", "_outgoing",
                 "_paused", "_sslobj", "agent", "closed", "confirmed_ts", "handshake", "heard",
                 "newest_ts", "transport")

    def __init__(self, agent: PerfAgent, handshake: asyncio.Future[None]) -> None:
        self.agent = agent
        self.handshake = handshake
        #: set by connection_made before any other callback: the ``ignore[union-attr]``
        #: below stand for a None check that would otherwise run on every write
        self.transport: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = agent.ctx.wrap_bio(self._incoming, self._outgoing,
                                          server_hostname=SAT)
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        #: set by ``PerfAgent.close`` to learn when the session is gone
        self.closed: asyncio.Future[None] | None = None
        #: the node sent application data (its first frame is its icinga::Hello)
        self.heard = False
        #: frame counting: bytes left of the current frame, an unfinished length prefix
        self._frame_rest = 0
        self._head = b""
        #: the current frame's payload so far, to read its ``ts``
        self._frame = bytearray()
        #: the newest ``ts`` received from the node, and the one last confirmed to it
        #: (``log::SetLogPosition``, as an Icinga agent does every 5 s)
        self.newest_ts = 0.0
        self.confirmed_ts = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection() hands a protocol a Transport; Protocol's signature says Base
        self.transport = transport  # type: ignore[assignment]
        self._do_handshake()

    def _do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            self.transport.abort()  # type: ignore[union-attr]
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def _flush(self) -> None:
        if self._outgoing.pending and not self.transport.is_closing():  # type: ignore[union-attr]
            self.transport.write(self._outgoing.read())  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        """Encrypt and send (the SSL object may take less than all at once)."""
        view = memoryview(data)
        sslobj = self._sslobj
        while view:
            view = view[sslobj.write(view):]
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self.handshake.done():
            self._do_handshake()
            if not self.handshake.done():
                return
        got = False
        try:
            while True:
                plain = self._sslobj.read(65536)
                if not plain:
                    self.close()                # the node's close_notify: answer, close
                    return
                got = True
                frames = self._count_frames(plain)
                if frames:
                    self.agent.counter[C_RECEIVED] += frames
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, OSError):
            # e.g. the node rejected our certificate after our side of the handshake
            self.transport.abort()  # type: ignore[union-attr]
            return
        self._flush()                           # key updates, alerts
        if got and not self.heard:
            self.heard = True
            self.agent.heard_from(self)

    def _count_frames(self, data: bytes) -> int:
        """Complete netstring frames in the stream so far; each frame's top-level ``ts``
        is noted in ``newest_ts`` (the node sends agents little: hello, heartbeats,
        commands)."""
        pos, n, frames = 0, len(data), 0
        while pos < n:
            if self._frame_rest:
                take = min(self._frame_rest, n - pos)
                self._frame += data[pos:pos + take]
                self._frame_rest -= take
                pos += take
                if not self._frame_rest:
                    frames += 1
                    self._note_ts(bytes(self._frame[:-1]))      # without the ","
                    self._frame.clear()
                continue
            colon = data.find(b":", pos)
            if colon < 0:
                self._head += data[pos:]
                break
            self._frame_rest = int(self._head + data[pos:colon]) + 1    # payload and ","
            self._head = b""
            pos = colon + 1
        return frames

    def _note_ts(self, payload: bytes) -> None:
        try:
            ts = orjson.loads(payload).get("ts")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(ts, (int, float)) and ts > self.newest_ts:
            self.newest_ts = float(ts)

    def eof_received(self) -> bool:
        return False                        # close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError(
                "connection closed during the TLS handshake"))
        self._wake(ConnectionResetError("connection lost"))
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        if self.agent.protocol is self:
            self.agent._lost(by_peer=True)

    def close(self) -> None:
        """close_notify, then close the socket."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self._sslobj.unwrap()
        except (ssl.SSLError, OSError):
            pass
        self._flush()
        self.transport.close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def _wake(self, exc: BaseException | None) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost")
        if self._paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain


class PerfAgent:
    """One emulated agent: a TLS session that may be dropped and dialled again."""

    def __init__(self, name: str, host: str, port: int, ctx: ssl.SSLContext, template: bytes,
                 batch: int, counter: Any, sndbuf: int) -> None:
        self.name = name
        self.host, self.port = host, port
        self.ctx = ctx
        self.template = template
        self.batch = batch
        self.counter = counter
        self.sndbuf = sndbuf
        #: the current session (None while disconnected)
        self.protocol: _AgentProtocol | None = None
        self.identified = False
        self.sent = 0
        self.last_us = 0
        self.errors: list[str] = []
        self.auto_reconnect = False
        self._reconnecting = False
        self.closing = False

    async def connect(self, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        handshake = loop.create_future()
        transport = None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _AgentProtocol(self, handshake), self.host, self.port)
                await handshake
        except BaseException:
            if transport is not None:
                transport.abort()
            self.counter[C_CONNECT_FAILURES] += 1
            raise
        if self.sndbuf:
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        transport.set_write_buffer_limits(high=256 * 1024)
        protocol.write(HELLO)
        self.protocol = protocol
        self.counter[C_CONNECTS] += 1
        if protocol.heard:      # the node's frame came before this coroutine resumed
            self.heard_from(protocol)
        if self.auto_reconnect:
            loop.call_later(IDENTIFY_TIMEOUT, self._check_identified, protocol)
        loop.call_later(HEARTBEAT_INTERVAL, self._heartbeat, protocol)
        loop.call_later(CONFIRM_INTERVAL, self._confirm, protocol)

    def _confirm(self, protocol: _AgentProtocol) -> None:
        """``log::SetLogPosition`` with the newest ``ts`` received, every 5 s when it moved,
        as Icinga's agents confirm what they got: without it the node keeps every logged
        frame sent to the agent (the soak's commands) as unconfirmed, which no real agent
        makes it do."""
        if protocol is not self.protocol or self.closing:
            return
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return
        if protocol.newest_ts > protocol.confirmed_ts:
            protocol.confirmed_ts = protocol.newest_ts
            try:
                protocol.write(netstring(orjson.dumps({
                    "jsonrpc": "2.0", "method": "log::SetLogPosition",
                    "params": {"log_position": protocol.newest_ts}})))
            except (OSError, ssl.SSLError):
                return
        asyncio.get_running_loop().call_later(CONFIRM_INTERVAL, self._confirm, protocol)

    def _heartbeat(self, protocol: _AgentProtocol) -> None:
        """``event::Heartbeat`` every 20 s, as an Icinga agent sends: a node closes a
        session it has heard nothing from for 60 s (an idle agent, or one that came back
        early in a long reconnect storm, would be dropped otherwise)."""
        if protocol is not self.protocol or self.closing:
            return
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            try:
                protocol.write(HEARTBEAT)
            except (OSError, ssl.SSLError):
                return
        asyncio.get_running_loop().call_later(HEARTBEAT_INTERVAL, self._heartbeat, protocol)

    def heard_from(self, protocol: _AgentProtocol) -> None:
        """The node's first frame (its icinga::Hello): it accepted our identity."""
        if protocol is self.protocol and not self.identified:
            self.identified = True
            self.counter[C_IDENTIFIED] += 1

    def _check_identified(self, protocol: _AgentProtocol) -> None:
        """A session the node never answered (e.g. accepted while it shut down): redial."""
        if self.protocol is protocol and not self.identified and not self.closing:
            if len(self.errors) < 3:
                self.errors.append(f"no answer from the node {IDENTIFY_TIMEOUT:g} s after "
                                   f"connecting: dialling again")
            self.drop()
            asyncio.ensure_future(self.reconnect(backoff=True))

    def _lost(self, by_peer: bool) -> None:
        if self.identified:
            self.identified = False
            self.counter[C_IDENTIFIED] -= 1
        if by_peer and not self.closing:
            self.counter[C_CLOSED_BY_PEER] += 1
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        if by_peer and self.auto_reconnect and not self.closing:
            asyncio.ensure_future(self.reconnect(backoff=True))

    async def reconnect(self, backoff: bool) -> None:
        """Dial again until it works (a storm: random 0-0.5 s first, then doubling to 2 s)."""
        if self._reconnecting:
            return
        self._reconnecting = True
        delay = 0.5
        try:
            if backoff:
                await asyncio.sleep(random.uniform(0, 0.5))
            while not self.closing and self.protocol is None:
                try:
                    await self.connect(timeout=15)
                    return
                except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
                    if len(self.errors) < 3:
                        self.errors.append(f"reconnect: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(random.uniform(0, delay))
                    delay = min(2.0, delay * 2)
        finally:
            self._reconnecting = False

    def drop(self) -> None:
        """Close our side (churn)."""
        self._lost(by_peer=False)

    async def run(self, stop: asyncio.Event, rate: float, offset: float) -> None:
        """Send until ``stop``: flat out (``rate`` 0) or ``rate`` results per second."""
        template, counter = self.template, self.counter
        last = self.last_us
        sent_here = 0
        if rate:
            await asyncio.sleep(offset)
        # the schedule starts after the offset: each agent keeps its own phase
        started = time.monotonic()
        while not stop.is_set():
            protocol = self.protocol
            if protocol is None:
                await asyncio.sleep(PACE_TICK)
                if rate:        # a disconnected agent does not build up a debt
                    sent_here = int((time.monotonic() - started) * rate)
                continue
            batch = self.batch
            if rate:
                elapsed = time.monotonic() - started
                due = int(elapsed * rate) - sent_here
                if due <= 0:
                    # sleep until the next result is due (at least one tick): with 1 result/s
                    # per agent and thousands of agents, waking every tick would saturate us
                    await asyncio.sleep(max(PACE_TICK, (sent_here + 1) / rate - elapsed))
                    continue
                batch = min(due, 4 * self.batch)
            data, last = stamped_frames(template, last, batch)
            try:
                protocol.write(data)
                self.sent += batch
                sent_here += batch
                counter[C_SENT] += batch
                counter[C_BYTES] += len(data)
                await protocol.drain()
            except (OSError, ssl.SSLError, ConnectionError, RuntimeError) as exc:
                if len(self.errors) < 3:
                    self.errors.append(f"send: {type(exc).__name__}: {exc}")
                if self.protocol is protocol:
                    self._lost(by_peer=True)
            await asyncio.sleep(0)
        self.last_us = last

    async def close(self) -> None:
        self.closing = True
        protocol, self.protocol = self.protocol, None
        if protocol is None or protocol.transport is None:
            return
        protocol.closed = asyncio.get_running_loop().create_future()
        protocol.close()
        try:
            await asyncio.wait_for(protocol.closed, 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001, S110 - best effort
            pass


def load_worker(cfg: dict[str, Any], conn: Any, counter: Any) -> None:
    """Entry point of a load process (multiprocessing, spawn)."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the main process stops us
    import uvloop
    uvloop.run(_worker(cfg, conn, counter))


async def _churn(agents: list[PerfAgent], stop: asyncio.Event, period: tuple[float, float],
                 stats: dict[str, int]) -> None:
    """Each agent in ``agents``: connected for a random while, then dropped and redialled."""
    async def cycle(agent: PerfAgent) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), random.uniform(*period))
                return
            except TimeoutError:
                pass
            agent.drop()
            stats["drops"] += 1
            await agent.reconnect(backoff=False)
    await asyncio.gather(*(cycle(a) for a in agents))


async def _storm_back(agent: PerfAgent, backlog: int) -> int:
    """Dial again (random 0-0.5 s first, as in ``storm``) and send ``backlog`` results at
    once: what an agent's replay log holds after an outage. Returns the results sent."""
    loop = asyncio.get_running_loop()
    # Replay only once the node has accepted us (its Hello came), as an agent does; a
    # session the node dropped or never answered (a handshake timeout in a long storm)
    # is dialled again, until the node takes it.
    dialled = loop.time()
    give_up = dialled + 600
    while not agent.closing and loop.time() < give_up:
        if agent.protocol is None:
            await agent.reconnect(backoff=True)
            dialled = loop.time()
        elif agent.identified:
            break
        elif loop.time() - dialled > IDENTIFY_TIMEOUT:
            agent.drop()
        else:
            await asyncio.sleep(0.05)
    protocol = agent.protocol
    if protocol is None or not agent.identified or not backlog:
        return 0
    data, agent.last_us = stamped_frames(agent.template, agent.last_us, backlog)
    protocol.write(data)
    agent.sent += backlog
    agent.counter[C_SENT] += backlog
    agent.counter[C_BYTES] += len(data)
    await protocol.drain()
    return backlog


async def _worker(cfg: dict[str, Any], conn: Any, counter: Any) -> None:
    commands = pipe_commands(conn, ("close",), lambda cmd: cmd[0] == "close")
    ca, certs = Path(cfg["ca"]), Path(cfg["certs"])
    agents = []
    for i in cfg["agents"]:
        name = agent_name(i)
        key = Path(cfg["shared_key"]) if cfg.get("shared_key") else certs / f"{name}.key"
        ctx = client_context(ca, certs / f"{name}.crt", key)
        agents.append(PerfAgent(name, cfg["host"], cfg["port"], ctx,
                                message_template(name, cfg["payload_bytes"]), cfg["batch"],
                                counter, cfg["sndbuf"]))
    conn.send(("ready", len(agents)))
    total = max(1, int(cfg.get("endpoints", len(agents))))
    stop = asyncio.Event()
    tasks: list[asyncio.Future[Any]] = []
    churn_stats = {"drops": 0}
    sent_at_go = 0
    while True:
        cmd = await commands.get()
        if cmd[0] == "connect":
            sem = asyncio.Semaphore(cfg.get("concurrency", 64))

            async def one(agent: PerfAgent, sem: asyncio.Semaphore = sem) -> None:
                async with sem:
                    await agent.connect()

            results = await asyncio.gather(*(one(a) for a in agents), return_exceptions=True)
            errors = [f"{a.name}: {r!r}" for a, r in zip(agents, results)
                      if isinstance(r, BaseException)]
            conn.send(("connected", len(agents) - len(errors), errors[:5], len(errors)))
        elif cmd[0] == "go":
            _, rate, churn_fraction, churn_period = cmd
            stop = asyncio.Event()
            sent_at_go = sum(a.sent for a in agents)
            # Phases spread evenly over one sending period across all load processes
            # (agent i of N starts at i/N of it): 5 000 agents at 1 result/s each must
            # offer 5 000 results/s, not a burst of 5 000 once a second.
            period = 1.0 / rate if rate else 0.0
            tasks = [asyncio.ensure_future(a.run(stop, rate, period * i / total))
                     for i, a in zip(cfg["agents"], agents)]
            if churn_fraction:
                every = max(1, round(1 / churn_fraction))
                churners = [a for k, a in enumerate(agents) if k % every == 0]
                churn_stats = {"drops": 0}
                tasks.append(asyncio.ensure_future(
                    _churn(churners, stop, churn_period, churn_stats)))
        elif cmd[0] == "stop":
            stop.set()
            if tasks:
                await asyncio.wait(tasks, timeout=10)
            tasks = []
            # agents the node dropped during the phase (churn) come back for the next one
            lost = [a for a in agents if a.protocol is None and not a.closing]
            if lost:
                await asyncio.wait([asyncio.ensure_future(a.reconnect(backoff=False))
                                    for a in lost], timeout=15)
            conn.send(("stopped", {
                "sent": sum(a.sent for a in agents) - sent_at_go,
                "per_agent_sent": {a.name: a.sent for a in agents},
                "errors": [f"{a.name}: {e}" for a in agents for e in a.errors][:5],
                "churn_drops": churn_stats["drops"],
            }))
            churn_stats = {"drops": 0}
        elif cmd[0] == "agentstorm":    # all drop at once, come back with a backlog
            backlog = int(cmd[1])
            for a in agents:
                a.drop()
            conn.send(("dropped", len(agents)))
            tasks = [asyncio.ensure_future(_storm_back(a, backlog)) for a in agents]
            stormed = await asyncio.gather(*tasks, return_exceptions=True)
            tasks = []
            conn.send(("stormed", sum(x for x in stormed if isinstance(x, int)),
                       [f"{a.name}: {e!r}" for a, e in zip(agents, stormed)
                        if isinstance(e, BaseException)][:5]))
        elif cmd[0] == "reconnect":     # the node goes away: dial again when it does
            for a in agents:
                a.auto_reconnect = bool(cmd[1])
                if a.auto_reconnect and a.protocol is None:  # lost earlier (e.g. churn)
                    asyncio.ensure_future(a.reconnect(backoff=True))
            conn.send(("ok",))
        elif cmd[0] == "close":
            stop.set()
            await close_agents(agents, conn)
            return
