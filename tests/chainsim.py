"""Real ``Node`` objects in one process, wired by hand: a chain whose faults a test picks.

Each ``SimNode`` is a real ``router.node.Node`` with its real ``ReplayManager`` (LMDB
replay log and processed positions under its own data directory), ``Receipts``,
routing, send queues and ledgers. Only the sockets are replaced: a ``SimConn`` stands
where a ``PeerConnection`` would be, and the test moves frames from one node's send
queue to the other's ``on_message`` itself, one at a time if it likes. That makes every
interleaving of sends, deliveries, confirmations, disconnects, kills and restarts
reachable and repeatable (``tests/test_exactly_once_property.py`` lets hypothesis pick
them).

A kill is a ``kill -9``: the node object is dropped with everything in memory (queues,
ledgers, processed positions not yet saved) and the replay log's writer loses every
record not yet committed. The writer commits only when asked (``commit``) or when an
operation (a checkpoint of the processed positions) is queued behind the records: what
a real writer does within its 5 ms window, made explicit.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import tempfile
import time as _real_time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from replaylog import ReplayWriter
from router.config import parse_config
from router.features.results import ResultStore
from router.node.core import Node
from router.node.replay import ReplayManager
from router.protocol import jsonrpc
from tests.nodeutil import ClusterSpec
from tests.pkiutil import make_test_pki

#: The writer never commits on its own: only flush() and queued operations make it.
NEVER = 10 ** 9


class SimConn:
    """The node's view of one peer session, without a socket."""

    def __init__(self, node: SimNode, endpoint: str, *, outbound: bool) -> None:
        self.sim = node
        self.expected_endpoint = endpoint if outbound else None
        self.endpoint: str | None = None
        self.identity: str | None = None
        self.address = f"sim:{endpoint}"
        self.direction = "outbound" if outbound else "inbound"
        self.state = "open"
        self.close_reason: str | None = None
        self.queue: Any = None
        self.ledger: Any = None
        self.stats: Any = None
        self.peer: Any = None
        self.blocked_sources: dict[SimConn, None] = {}
        self.expected_read = 2048
        self.blocked_by = 0
        self.invalid_budget = None
        self.reading_paused = False
        self.write_buffer_size = 0
        self.input_rate = None
        self.fed_targets: tuple[str, ...] = ()
        self.transport = None                       # no socket in the simulation
        self.handshake_bytes_in = self.handshake_bytes_out = 0
        self._peer_name = endpoint
        loop = node.loop
        self.ready: asyncio.Future[None] = loop.create_future()

    # what the node calls
    def peer_identity(self) -> str:
        return self._peer_name

    def fileno(self) -> int:
        return 3

    def start_session(self, peer: Any, queue: Any, endpoint: str | None, stats: Any) -> None:
        self.peer, self.queue, self.endpoint, self.stats = peer, queue, endpoint, stats
        if not self.ready.done():
            self.ready.set_result(None)

    def schedule_flush(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def restart_reading(self) -> None:
        self.reading_paused = False

    def close(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.state = "closed"

    abort = close

    def write_direct(self, data: bytes) -> None:
        pass

    def __hash__(self) -> int:
        return id(self)


class RecordingResults(ResultStore):
    """The result view, writing down every result handed to it (a feature's view)."""

    def __init__(self, record: list[tuple[str, str]], hops: list[str], *args: Any) -> None:
        super().__init__(*args)
        self.record = record
        self.hops = hops

    def update(self, host: str, service: str | None, *args: Any, **kwargs: Any) -> Any:
        self.record.append((host, service or ""))
        self.hops.append(args[1] if len(args) > 1 else "")   # the peer it came from
        return super().update(host, service, *args, **kwargs)


class SimNode:
    """One node of the chain: its config, data directory and (while alive) its Node."""

    def __init__(self, spec: ClusterSpec, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.name = name
        self.loop = loop
        self.node: Node | None = None
        self.writer: ReplayWriter | None = None
        self.lives = 0
        #: Check results handed to this node's result view, per life: (host, service).
        self.delivered: list[list[tuple[str, str]]] = []
        #: Per life: checkpoint number -> deliveries made before it was taken.
        self.marks: list[dict[int, int]] = []
        #: Per life: the number of the newest checkpoint saved (updated at a kill).
        self.saved_through: list[int] = []
        #: Per life: the peer each delivery came from; and the parts saved: (peer, the
        #: checkpoint number up to which its position was confirmed, Receipts._save_part).
        self.delivered_hops: list[list[str]] = []
        self.parts: list[list[tuple[str, int]]] = []

    def start(self) -> Node:
        config_text = self.spec.toml(self.name)
        (self.spec.directory / self.name).mkdir(parents=True, exist_ok=True)
        config = parse_config(config_text.replace('log_level = "debug"',
                                                  'log_level = "warning"'), "sim.toml")
        node = Node(config, self.loop, server_context=object(),  # type: ignore[arg-type]
                    client_context=object())  # type: ignore[arg-type]
        writer = ReplayWriter.open(self.spec.directory / self.name / "replaylog",
                                   batch_messages=NEVER, batch_ms=NEVER * 1000.0)
        node.replay = ReplayManager(node, writer)
        node.log_position_interval = 0.0
        self.node, self.writer = node, writer
        self.lives += 1
        life: list[tuple[str, str]] = []
        hops: list[str] = []
        parts: list[tuple[str, int]] = []
        self.delivered.append(life)
        self.delivered_hops.append(hops)
        self.parts.append(parts)
        self.saved_through.append(0)
        if node.results is not None:
            limits = node.config.limits
            node.results = RecordingResults(life, hops, limits.max_results,
                                            limits.max_results_per_zone)
        # A checkpoint covers the deliveries made before it was taken.
        receipts = node.receipts
        take_checkpoint = receipts.checkpoint
        marks: dict[int, int] = {}

        def checkpoint() -> None:
            before = receipts.checkpoints
            take_checkpoint()
            if receipts.checkpoints != before:
                marks[receipts.checkpoints] = len(life)
        receipts.checkpoint = checkpoint  # type: ignore[method-assign]
        self.marks.append(marks)
        # A part confirms one peer's position up to a checkpoint: what came from that peer
        # before it stays reached too (the peer never sends it again).
        save_part, saved_done = receipts._save_part, receipts._saved_done
        running: list[tuple[str, int]] = []

        def part(index: int, endpoint: str) -> None:
            number = receipts._pending[index].number      # noqa: SLF001
            save_part(index, endpoint)
            if receipts._saving:                           # noqa: SLF001
                running[:] = [(endpoint, number)]

        def done(future: Any, number: int | None, origins: Any, hops_: Any,
                 recent: Any) -> None:
            saved_done(future, number, origins, hops_, recent)
            if running and number is None and hops_ and future.exception() is None:
                parts.append(running[0])
            running.clear()
        receipts._save_part = part  # type: ignore[method-assign]
        receipts._saved_done = done  # type: ignore[method-assign]
        return node

    @property
    def alive(self) -> bool:
        return self.node is not None

    def kill(self) -> None:
        """``kill -9``: memory gone, records not yet committed gone."""
        writer, node = self.writer, self.node
        assert writer is not None and node is not None
        self.saved_through[-1] = node.receipts.saved_through
        with writer._lock:              # noqa: SLF001 - what the crash takes away
            writer._queue.clear()
            writer._ops.clear()
            writer._committed = writer._submitted
        writer.close(5.0)
        node.replay.received.close()   # type: ignore[union-attr]
        self.node = self.writer = None

    def durable_deliveries(self) -> list[tuple[str, str]]:
        """What reached this node's result view and stays reached: in a killed life,
        what its last saved checkpoint covers, and what came from a peer whose position
        a part confirmed; in the current life, everything."""
        out: list[tuple[str, str]] = []
        for index, life in enumerate(self.delivered):
            if index == len(self.delivered) - 1 and self.node is not None:
                out += life
                continue
            marks = self.marks[index]
            saved = marks.get(self.saved_through[index], 0)
            out += life[:saved]
            hops = self.delivered_hops[index]
            covered = set()
            for peer, number in self.parts[index]:
                covered.update(i for i in range(saved, marks.get(number, 0))
                               if hops[i] == peer)
            out += [life[i] for i in sorted(covered)]
        return out

    def stop(self) -> None:
        """A clean stop (for the end of a test)."""
        if self.node is None:
            return
        node = self.node
        for conn in list(node.connections.values()):
            node.connection_lost(conn, None)    # type: ignore[arg-type]
        self.run(node.replay.close(10.0))       # type: ignore[union-attr]
        self.node = self.writer = None

    def commit(self) -> None:
        if self.writer is not None:
            assert self.writer.flush(10.0)

    def checkpoint(self) -> None:
        if self.node is None:
            return
        self.node.receipts.checkpoint()
        self.settle()

    def confirm(self) -> None:
        """One round of log::SetLogPosition to every peer (queued, not yet delivered)."""
        if self.node is None:
            return
        housekeeping = self.node.housekeeping
        for _ in range(2):
            housekeeping._on_log_position_tick()       # noqa: SLF001
            housekeeping.stop()

    def settle(self) -> None:
        """Run the loop until the node's background work (saves, replays) is done."""
        node = self.node
        if node is None:
            return
        for _ in range(400):
            self.run(asyncio.sleep(0.001))
            busy = node.receipts._saving or (node.replay is not None and node.replay._tasks)
            if not busy:
                return
        raise AssertionError(f"{self.name}: background work did not finish")

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


class SimLink:
    """A session between two alive SimNodes (``a`` dials ``b``)."""

    def __init__(self, a: SimNode, b: SimNode) -> None:
        self.a, self.b = a, b
        self.conn_a: SimConn | None = None   # a's connection to b
        self.conn_b: SimConn | None = None   # b's connection to a

    @property
    def up(self) -> bool:
        return self.conn_a is not None

    def connect(self) -> None:
        a, b = self.a, self.b
        assert a.node is not None and b.node is not None and not self.up
        self.conn_a = SimConn(a, b.name, outbound=True)
        self.conn_b = SimConn(b, a.name, outbound=False)
        for sim, conn in ((a, self.conn_a), (b, self.conn_b)):
            assert sim.node is not None
            sim.node.all_connections.add(conn)   # type: ignore[arg-type]
            assert sim.node.handshake_done(conn)  # type: ignore[arg-type]
        a.settle()
        b.settle()

    def drop(self) -> None:
        """Both ends see the connection end; what was in flight is gone."""
        for sim, conn in ((self.a, self.conn_a), (self.b, self.conn_b)):
            if conn is not None and sim.node is not None:
                conn.state = "closed"
                sim.node.connection_lost(conn, None)    # type: ignore[arg-type]
        self.conn_a = self.conn_b = None

    def deliver(self, forward: bool, count: int) -> int:
        """Move up to ``count`` frames across (a -> b when ``forward``)."""
        if not self.up:
            return 0
        src, dst = (self.conn_a, self.conn_b) if forward else (self.conn_b, self.conn_a)
        dst_sim = self.b if forward else self.a
        assert src is not None and dst is not None and dst_sim.node is not None
        moved = 0
        while moved < count and src.queue is not None and src.queue.messages:
            frames, _ = src.queue.take(1, src.ledger)
            for frame in frames:
                payload = frame[frame.index(b":") + 1:-1]
                msg = jsonrpc.parse_message(payload)
                dst_sim.node.on_message(dst, msg)   # type: ignore[arg-type]
                moved += 1
            if dst.state != "open":
                break
        dst_sim.settle()
        return moved

    def pending(self) -> int:
        total = 0
        for conn in (self.conn_a, self.conn_b):
            if conn is not None and conn.queue is not None:
                total += conn.queue.messages
        return total


def frame_service(frame: bytes) -> str | None:
    payload = orjson.loads(frame[frame.index(b":") + 1:-1])
    params = payload.get("params") or {}
    service = params.get("service")
    return service if isinstance(service, str) else None




def rounds(nodes: Iterable[SimNode], links: Iterable[SimLink], n: int) -> None:
    """``n`` rounds of traffic and periodic work: every link that is up delivers both
    ways, then every node commits, takes a checkpoint and confirms."""
    nodes, links = list(nodes), list(links)
    for _ in range(n):
        for link in links:
            if link.up:
                link.deliver(True, 1000)
                link.deliver(False, 1000)
        for sim in nodes:
            sim.commit()
            sim.checkpoint()
            sim.confirm()


def kill_node(sim: SimNode, links: Iterable[SimLink]) -> None:
    """``kill -9`` of ``sim``: the peer of each of its links sees the connection drop
    (what was in flight is gone), then the node dies."""
    if sim.node is None:
        return
    for session in links:
        if sim in (session.a, session.b):
            other = session.b if session.a is sim else session.a
            conn = session.conn_b if session.a is sim else session.conn_a
            if conn is not None and other.node is not None:
                conn.state = "closed"
                other.node.connection_lost(conn, None)  # type: ignore[arg-type]
            session.conn_a = session.conn_b = None
    sim.kill()


_PKIS: dict[tuple[str, ...], object] = {}


def shared_pki(names: Iterable[str]) -> object:
    """One test PKI per set of names for a whole test session (simulated nodes never
    read it: no TLS here), so that property tests do not make one per example."""
    key = tuple(names)
    if key not in _PKIS:
        directory = Path(tempfile.mkdtemp(prefix="chain-pki-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _PKIS[key] = make_test_pki(directory, list(key))
    return _PKIS[key]


def traced(function: Callable[..., None]) -> Callable[..., None]:
    """A state machine rule that writes its step into ``self.trace`` first: a failing
    example then prints its whole trace."""
    @functools.wraps(function)
    def step(self: Any, **kwargs: object) -> None:
        self.trace.append(f"{function.__name__}({kwargs})")
        function(self, **kwargs)
    return step


def heal(nodes: Iterable[SimNode], links: Iterable[SimLink], max_rounds: int = 80) -> None:
    """Every node up, every link up, then rounds of traffic and periodic work until
    nothing moves and no checkpoint waits; AssertionError if that never happens."""
    nodes, links = list(nodes), list(links)
    for sim in nodes:
        if sim.node is None:
            sim.start()
    for session in links:
        if not session.up:
            session.connect()
    for _ in range(max_rounds):
        moved = 0
        for session in links:
            moved += session.deliver(True, 10_000) + session.deliver(False, 10_000)
        for sim in nodes:
            sim.commit()
            sim.checkpoint()
            sim.confirm()
        if not moved and all(not s.pending() for s in links) and not any(
                sim.node.receipts.stats()["pending_checkpoints"]
                for sim in nodes if sim.node is not None):
            return
    raise AssertionError("the nodes did not settle")


def chain_spec(directory: Path) -> ClusterSpec:
    """agent1 -> sat1 -> master: zones ``agent1`` below ``sat`` below ``master``, with a
    test PKI under ``directory``."""
    names = ("agent1", "sat1", "master")
    return ClusterSpec(directory / "nodes", make_test_pki(directory / "pki", list(names)),
                       [("master", ["master"], None), ("sat", ["sat1"], "master"),
                        ("agent1", ["agent1"], "sat")])


class SteppedClock:
    """A ``time`` module whose wall clock is ``offset`` seconds off (monkeypatch it into
    ``router.node.core`` to step the node's clock)."""

    offset = 0.0

    def time(self) -> float:
        return _real_time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)


def start_cluster(directory: Path, loop: asyncio.AbstractEventLoop,
                  zones: list[tuple[str, list[str], str | None]],
                  links: dict[str, tuple[str, str]], *, connect: bool = True
                  ) -> tuple[dict[str, SimNode], dict[str, SimLink]]:
    """Every endpoint of ``zones`` started (a test PKI under ``directory``), and the
    ``links`` (name -> (dialler, listener)), connected unless ``connect`` is False."""
    names = sorted({name for _, endpoints, _ in zones for name in endpoints})
    spec = ClusterSpec(directory / "nodes", make_test_pki(directory / "pki", names), zones)
    sims = {name: SimNode(spec, name, loop) for name in names}
    for sim in sims.values():
        sim.start()
    made = {key: SimLink(sims[a], sims[b]) for key, (a, b) in links.items()}
    if connect:
        for link in made.values():
            link.connect()
    return sims, made


def stop_all(sims: dict[str, SimNode], loop: asyncio.AbstractEventLoop) -> None:
    for sim in sims.values():
        sim.stop()
    loop.close()


def start_chain(directory: Path, loop: asyncio.AbstractEventLoop
                ) -> tuple[dict[str, SimNode], list[SimLink]]:
    """agent1 -> sat1 -> master (``chain_spec``) started, both links up."""
    spec = chain_spec(directory)
    sims = {name: SimNode(spec, name, loop) for name in ("agent1", "sat1", "master")}
    links = [SimLink(sims["agent1"], sims["sat1"]), SimLink(sims["sat1"], sims["master"])]
    for sim in sims.values():
        sim.start()
    for link in links:
        link.connect()
    return sims, links


def delivery_faults(sim: SimNode, produced: list[str], may_be_missing: set[str] = frozenset()
                    ) -> tuple[list[str], list[str], Counter[str]]:
    """(services delivered more than once, services never delivered, the counts) among
    ``sim``'s durable deliveries, for the results ``produced``."""
    counts = Counter(service for _, service in sim.durable_deliveries())
    twice = sorted(s for s, n in counts.items() if n > 1)
    lost = [s for s in produced if s not in counts and s not in may_be_missing]
    return twice, lost, counts


def shut_down(nodes: Iterable[SimNode], loop: asyncio.AbstractEventLoop,
              directory: Path) -> None:
    """End of a state machine's example: stop what runs, whatever state it is in."""
    for sim in nodes:
        try:
            sim.stop()
        except Exception:
            pass
    loop.close()
    shutil.rmtree(directory, ignore_errors=True)


def deliver_and_ack(session: SimLink, forward: bool, count: int, ack: str, *,
                    commit: bool = True) -> None:
    """A state machine's delivery step: (re)connect a link whose nodes are alive, deliver
    up to ``count`` frames one way, then the receiver does nothing (``ack="none"``),
    confirms, or checkpoints (after a commit of its log, with ``commit``) and confirms
    (``"checkpoint"``)."""
    if not session.up and session.a.alive and session.b.alive:
        session.connect()
    session.deliver(forward, count)
    receiver = session.b if forward else session.a
    if ack == "checkpoint":
        if commit:
            receiver.commit()
        receiver.checkpoint()
    if ack != "none":
        receiver.confirm()


def produce_results(sim: SimNode, count: int, produced: list[str]) -> None:
    """``count`` check results originated on ``sim`` (if it is up), one new service
    each, appended to ``produced``."""
    from tests.nodeutil import check_result
    if sim.node is None:
        return
    for _ in range(count):
        service = f"{sim.name}-{len(produced)}"
        assert sim.node.originate("event::CheckResult", check_result(sim.name, service,
                                                                     service))
        produced.append(service)


__all__ = ["SimConn", "SimLink", "SimNode", "SteppedClock", "chain_spec", "deliver_and_ack",
           "delivery_faults", "frame_service", "produce_results",
           "heal", "kill_node", "rounds", "shared_pki", "shut_down", "start_chain", "start_cluster",
           "stop_all", "traced"]
