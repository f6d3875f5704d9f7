#!/usr/bin/env python3
"""Relay throughput of one satellite: N TLS agents -> satellite -> parent, router vs Icinga 2.

What runs (everything on 127.0.0.1, one CA from ``router.pki``, EC P-256 keys):

* the **node under test**, in its own process(es): our router (``python -m router serve
  --config FILE``, a generated TOML) or a real Icinga 2 daemon (started with
  ``tests/interop/icinga.py``, log severity ``information``, no CheckerComponent, one
  Host ``agent-NNN`` and Service ``agent-NNN!svc`` per agent zone). Both are endpoint
  ``sat1`` in zone ``satellite`` below zone ``master``, with one child zone ``agent-NNN``
  (endpoint ``agent-NNN``) per agent;
* ``--workers`` **load processes** (multiprocessing, spawn), each with its share of the
  ``--agents`` emulated agents. Every agent has its own certificate and TLS session and
  sends ``event::CheckResult`` for ``agent-NNN!svc``: ``--batch`` frames per ``write``,
  then ``await writer.drain()`` (TCP backpressure), either as fast as the node takes them
  (default) or at ``--rate`` msg/s in total. ``ts`` and ``cr.execution_start`` strictly
  increase per agent (Icinga drops older ones). Agent sockets get a fixed 64 KiB send
  buffer (``--agent-sndbuf``) so the generator does not first fill 100 x 4 MiB of kernel
  buffers; the node's receive buffers still autotune (about 2 MiB per agent here);
* the emulated **parent** ``master`` in this (the main) process: it dials the satellite,
  counts the ``event::CheckResult`` frames it receives (every 64th one is fully parsed:
  host, service, latency = arrival - ``cr.execution_end``) and sends
  ``log::SetLogPosition`` once a second, as an Icinga master does.

Per target: start the node, connect the parent, connect the agents, wait until the node
reports every agent connected, start sending, ``--warmup`` seconds, then a ``--duration``
measurement window, then stop the agents and wait (up to ``--drain`` s) for the backlog.

Columns of the table (all measured in the window):

* delivered msg/s: CheckResults that reached the parent / window;
* accepted msg/s: CheckResults the agents wrote / window; once the socket buffers are
  full (after the warm-up) this is the node's ingest rate;
* node CPU s/10k msgs: user+system CPU of the node's process tree (psutil) per 10 000
  delivered messages (the JSON also has it per 10 000 accepted);
* node CPU cores, node RSS MB (peak of the tree's summed RSS, sampled every 0.5 s);
* latency p50 s: arrival at the parent - ``execution_end`` stamped by the agent, for the
  sampled messages that arrived in the window. Under saturation this is mostly the time
  the message waited in the node's socket receive buffer.

Below the table: the generator's own CPU (each load process, the parent/main process),
how busy the machine was, totals (sent, delivered, coalesced by the node) and the end-to-
end rate (everything delivered / time from the start of sending to the last delivery).
Warnings flag a saturated generator, a busy machine, CPU used by processes outside the
benchmark, messages that never arrived, and results the node coalesced. The last line of
the table is the ratio router/icinga; both targets get the same load, one after the other,
in the same run.

Usage::

    python perf/bench_relay.py [--agents 100] [--duration 10] [--warmup 3]
        [--payload-bytes 1024] [--rate MSG_PER_S] [--workers 2] [--batch 32]
        [--only router|icinga] [--json FILE] [--py-spy FILE] [--keep]
        [--parent-rate MSG_PER_S] [--router-cmd CMD] [--router-toml TOML] [--drain 30]
        [--agent-sndbuf 65536] [--icinga-log-severity information]

``--payload-bytes`` is the size of one agent's JSON message (the netstring payload); the
plugin output is padded to reach it. ``--py-spy FILE`` records the router with py-spy
(raw collapsed stacks, 100 Hz, non-blocking) during its window and prints the hottest
functions. ``--router-cmd`` runs another build of the router (e.g. a patched checkout:
``--router-cmd "python /path/to/wrapper.py"``, which must behave like ``python -m
router``); ``--router-toml`` appends TOML to the router's config (e.g. other
``[limits]``). ``--parent-rate`` makes the parent read at most that many messages per
second (a slow master, to see the node's backpressure and coalescing).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import psutil  # noqa: E402

from router import pki  # noqa: E402

SAT = "sat1"
MASTER = "master"
SERVICE = "svc"
SAMPLE_EVERY = 64           # the parent parses every 64th CheckResult completely
CHECK_RESULT = b"event::CheckResult"
GEN_SATURATED = 0.90        # a generator process above 90 % of one core is saturated
PACE_TICK = 0.02            # with --rate, each agent wakes up every 20 ms


def agent_name(i: int) -> str:
    return f"agent-{i:03d}"


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def netstring(payload: bytes) -> bytes:
    return b"%d:%b," % (len(payload), payload)


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # we dial 127.0.0.1; the chain is still verified
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


HELLO = netstring(orjson.dumps({"jsonrpc": "2.0", "method": "icinga::Hello",
                                "params": {"capabilities": 1, "version": 21306}}))


# ======================================================================================
# PKI
# ======================================================================================

@dataclass
class BenchPKI:
    ca_dir: Path
    out_dir: Path
    ca_cert: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca_cert = self.ca_dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.out_dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.out_dir / f"{name}.key"


def make_pki(base: Path, agents: int) -> BenchPKI:
    """One CA; certificates for sat1, master and every agent (EC P-256, CN = SAN = name)."""
    ca_dir, out_dir = base / "ca", base / "issued"
    pki.create_ca(ca_dir, common_name="Bench Relay CA")
    ca_cert, ca_key = pki.load_ca(ca_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in [SAT, MASTER] + [agent_name(i) for i in range(agents)]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name)
        pki.write_private_key(out_dir / f"{name}.key", key)  # type: ignore[arg-type]
        pki.write_certificate(out_dir / f"{name}.crt", cert)
    return BenchPKI(ca_dir, out_dir)


# ======================================================================================
# Targets: the node under test
# ======================================================================================

def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


class Target:
    name = "?"
    port = 0
    log_path: Path | None = None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def root_pid(self) -> int | None: ...
    def connected_endpoints(self) -> set[str]: ...
    def version(self) -> str: ...
    def diagnostics(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "".join(collections.deque(open(self.log_path, errors="replace"), maxlen=30))


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


class RouterTarget(Target):
    """``python -m router serve --config FILE`` as a subprocess (own CPU, own GIL)."""

    name = "router"

    def __init__(self, base: Path, bench_pki: BenchPKI, agents: int,
                 extra_toml: str = "", command: str = "") -> None:
        import shlex
        self.command = shlex.split(command) if command else [sys.executable, "-m", "router"]
        self.custom_command = bool(command)
        self.dir = base / "router"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.status_port = free_port()
        self.config_path = self.dir / "router.toml"
        self.log_path = self.dir / "router.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out = None
        lines = [
            'log_level = "info"',
            f'listen = "127.0.0.1:{self.port}"',
            f'status_listen = "127.0.0.1:{self.status_port}"',
            "",
            "[node]",
            f'name = "{SAT}"',
            f'data_dir = "{self.dir / "data"}"',
            "",
            "[tls]",
            f'ca = "{bench_pki.ca_cert}"',
            f'cert = "{bench_pki.cert(SAT)}"',
            f'key = "{bench_pki.key(SAT)}"',
            "",
            "[timeouts]",
            "drain = 2",
            "",
            "[[zones]]", f'name = "{MASTER}"', f'endpoints = ["{MASTER}"]',
            "",
            "[[zones]]", 'name = "satellite"', f'endpoints = ["{SAT}"]', f'parent = "{MASTER}"',
        ]
        for i in range(agents):
            a = agent_name(i)
            lines += ["", "[[zones]]", f'name = "{a}"', f'endpoints = ["{a}"]',
                      'parent = "satellite"']
        for ep in [MASTER, SAT] + [agent_name(i) for i in range(agents)]:
            lines += ["", "[[endpoints]]", f'name = "{ep}"']
        if extra_toml:
            lines += ["", extra_toml.replace("\\n", "\n")]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        (self.dir / "data").mkdir(exist_ok=True)
        self._out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--config", str(self.config_path)],
            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n"
                                   f"{self.diagnostics()}")
            try:
                self._get("/healthz")
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"router did not answer on its status port\n{self.diagnostics()}")

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}{path}",
                                    timeout=5) as resp:
            return resp.read()

    def status(self) -> dict[str, Any]:
        return orjson.loads(self._get("/v1/status"))

    def connected_endpoints(self) -> set[str]:
        return {e["name"] for e in self.status()["endpoints"]
                if e["connected"] and e["name"] != SAT}

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def version(self) -> str:
        from router import __version__
        if self.custom_command:
            return f"router {__version__} via {' '.join(self.command)} (custom build)"
        try:
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                    "router"], capture_output=True, text=True,
                                   check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return f"router {__version__}"
        return f"router {__version__} (git {head}{', router/ modified' if dirty else ''})"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not None:
            self._out.close()
            self._out = None


class IcingaTarget(Target):
    """A real Icinga 2 satellite from the interop harness (no CheckerComponent)."""

    name = "icinga"

    def __init__(self, base: Path, bench_pki: BenchPKI, agents: int, severity: str) -> None:
        from tests.interop.icinga import IcingaNode, find_icinga2

        binary = find_icinga2()
        if binary is None:
            raise RuntimeError("icinga2 not found ($ICINGA2_BIN, $PATH, /usr/sbin/icinga2)")
        self.binary = binary

        class BenchIcingaNode(IcingaNode):
            # The harness logs at debug level (one line per message under this load);
            # a benchmark runs the daemon at its usual level instead.
            def render_config(self) -> str:
                return super().render_config().replace(
                    'severity = "debug"', f'severity = "{severity}"')

        objects = []
        zones = [{"name": MASTER, "endpoints": [MASTER]},
                 {"name": "satellite", "endpoints": [SAT], "parent": MASTER}]
        endpoints = [{"name": SAT}, {"name": MASTER}]
        for i in range(agents):
            a = agent_name(i)
            zones.append({"name": a, "endpoints": [a], "parent": "satellite"})
            endpoints.append({"name": a})
            objects.append(
                f'object Host "{a}" {{\n  check_command = "dummy"\n'
                f'  enable_active_checks = false\n  zone = "{a}"\n}}\n'
                f'object Service "{SERVICE}" {{\n  host_name = "{a}"\n'
                f'  check_command = "dummy"\n  enable_active_checks = false\n'
                f'  zone = "{a}"\n}}\n')
        self.port = free_port()
        self.node = BenchIcingaNode(base / "icinga", SAT, "satellite", api_port=self.port,
                                    endpoints=endpoints, zones=zones,
                                    services="\n".join(objects), checker=False,
                                    binary=binary)
        self.node.install_certs(bench_pki.ca_cert, bench_pki.cert(SAT), bench_pki.key(SAT))
        self.log_path = self.node.log_path

    def start(self) -> None:
        self.node.start(timeout=60)

    def connected_endpoints(self) -> set[str]:
        return set(self.node.connected_endpoints())

    def root_pid(self) -> int | None:
        return self.node.pid

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             env=self.node._env(), check=False).stdout
        first = out.splitlines()[0] if out else "icinga2 ?"
        return first.replace("icinga2 - The Icinga 2 network monitoring daemon ", "icinga2 ")

    def stop(self) -> None:
        self.node.stop()

    def diagnostics(self) -> str:
        return self.node.diagnostics(30)


# ======================================================================================
# Load generator: a worker process with its share of the agents
# ======================================================================================

def message_template(agent: str, payload_bytes: int) -> bytes:
    """The agent's CheckResult as a %-template with 5 %b slots (ts fields), padded."""
    slots = ["execution_end", "execution_start", "schedule_end", "schedule_start", "ts"]

    def build(pad: int) -> bytes:
        cr = {
            "active": True, "check_source": agent,
            "command": ["/usr/lib/nagios/plugins/check_dummy", "0", "OK"],
            "execution_end": "@execution_end@", "execution_start": "@execution_start@",
            "exit_status": 0, "output": "OK - benchmark result" + (" " + "x" * (pad - 1)
                                                                   if pad > 0 else ""),
            "performance_data": ["time=0.001000s;;;0.000000"],
            "previous_hard_state": 0, "schedule_end": "@schedule_end@",
            "schedule_start": "@schedule_start@", "scheduling_source": agent, "state": 0,
            "ttl": 0, "type": "CheckResult",
            "vars_after": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
            "vars_before": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
        }
        msg = {"jsonrpc": "2.0", "method": "event::CheckResult",
               "params": {"cr": cr, "host": agent, "service": SERVICE}, "ts": "@ts@"}
        raw = orjson.dumps(msg).replace(b"%", b"%%")
        for slot in slots:
            raw = raw.replace(b'"@%s@"' % slot.encode(), b"%b")
        return raw

    sample = build(0) % ((b"1700000000.000000",) * 5)
    return build(max(0, payload_bytes - len(sample)))


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
                now = int(time.time() * 1e6)
                first = now if now > last else last + 1
                frames = []
                for us in range(first, first + batch):
                    end = b"%d.%06d" % divmod(us, 1_000_000)
                    start = b"%d.%06d" % divmod(us - 1000, 1_000_000)
                    sched = b"%d.%06d" % divmod(us - 2000, 1_000_000)
                    payload = template % (end, start, end, sched, end)
                    frames.append(b"%d:%b," % (len(payload), payload))
                last = first + batch - 1
                data = b"".join(frames)
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
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                cmd = "close"
            loop.call_soon_threadsafe(commands.put_nowait, cmd)
            if cmd == "close":
                return

    threading.Thread(target=pump, daemon=True).start()
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
            await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
            try:
                conn.send(("closed",))
            except OSError:
                pass
            return


# ======================================================================================
# The emulated parent (in the main process)
# ======================================================================================

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
        self.transport.write(netstring(orjson.dumps({
            "jsonrpc": "2.0", "method": "log::SetLogPosition",
            "params": {"log_position": self.last_ts}, "ts": time.time()})))
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        find = buf.find
        while True:
            colon = find(b":", pos, pos + 12)
            if colon < 0:
                break
            size = int(buf[pos:colon])
            end = colon + 1 + size
            if end >= n:
                break
            if find(CHECK_RESULT, colon + 1, colon + 1 + min(size, 200)) >= 0:
                self.check_results += 1
                self.last_arrival = time.monotonic()
                if self.check_results % SAMPLE_EVERY == 0:
                    self._sample(bytes(buf[colon + 1:end]))
            else:
                self.other += 1
                try:
                    self.methods[orjson.loads(bytes(buf[colon + 1:end])).get("method", "?")] += 1
                except orjson.JSONDecodeError:
                    self.methods["(bad json)"] += 1
            pos = end + 1
        if pos:
            del buf[:pos]
        if self.read_rate:
            self._throttle()

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


# ======================================================================================
# One target run
# ======================================================================================

def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def all_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every process on the machine (to spot outside load)."""
    out = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[p.pid] = (p.info["name"] or "?", t.user + t.system)
    return out


def machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


async def _poll(predicate: Any, timeout: float, what: str, target: Target) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await asyncio.to_thread(predicate)
            if last:
                return last
        except Exception as exc:  # noqa: BLE001
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target.name}: timed out waiting for {what} "
                               f"(last: {last!r})\n{target.diagnostics()}")
        await asyncio.sleep(0.2)


async def router_counts(target: Target) -> dict[str, int]:
    """The router's own counters (received from agents, sent to and coalesced for master)."""
    if not isinstance(target, RouterTarget):
        return {}
    t0 = time.monotonic()
    try:
        status = await asyncio.to_thread(target.status)
    except Exception as exc:  # noqa: BLE001 - reported as a warning
        return {"error": f"{type(exc).__name__}: {exc} (after {time.monotonic() - t0:.1f} s)"}
    master = next(e for e in status["endpoints"] if e["name"] == MASTER)
    return {"received": sum(e["messages_received"] for e in status["endpoints"]
                            if e["name"].startswith("agent-")),
            "sent_to_master": master["messages_sent"], "coalesced": master["coalesced"],
            "dropped": master["dropped"], "refused": status["totals"]["messages_refused"],
            "stale_dropped": status["totals"]["stale_dropped"]}


async def icinga_queues(target: Target) -> dict[str, Any]:
    """Icinga's own queue lengths (/v1/status/ApiListener json_rpc): where a backlog sits."""
    if not isinstance(target, IcingaTarget):
        return {}
    try:
        status = await asyncio.to_thread(target.node.api_listener_status)
        return dict(status.get("json_rpc", {}))
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


async def _recv(conn: Any, timeout: float) -> Any:
    def get() -> Any:
        if not conn.poll(timeout):
            raise TimeoutError("load worker did not answer")
        return conn.recv()
    return await asyncio.to_thread(get)


async def run_target(target: Target, bench_pki: BenchPKI, args: argparse.Namespace
                     ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t_setup = time.monotonic()
    print(f"[{target.name}] starting the node ...", flush=True)
    target.start()        # blocking, from the main thread (Icinga's PDEATHSIG needs that)
    workers: list[tuple[Any, Any, Any]] = []
    parent: ParentProtocol | None = None
    pyspy: subprocess.Popen[bytes] | None = None
    try:
        ctx = client_context(bench_pki.ca_cert, bench_pki.cert(MASTER), bench_pki.key(MASTER))
        _, parent = await asyncio.wait_for(loop.create_connection(
            lambda: ParentProtocol(args.parent_rate), "127.0.0.1", target.port, ssl=ctx, server_hostname=SAT), 20)
        await _poll(lambda: MASTER in target.connected_endpoints(), 30,
                    "the parent connection", target)

        spawn = mp.get_context("spawn")
        shares = [list(range(args.agents))[k::args.workers] for k in range(args.workers)]
        for share in shares:
            if not share:
                continue
            here, there = spawn.Pipe()
            counter = spawn.RawArray(ctypes.c_longlong, 2)
            cfg = {"agents": share, "port": target.port, "ca": str(bench_pki.ca_cert),
                   "certs": str(bench_pki.out_dir), "payload_bytes": args.payload_bytes,
                   "batch": args.batch, "sndbuf": args.agent_sndbuf,
                   "rate_per_agent": args.rate / args.agents if args.rate else 0.0}
            proc = spawn.Process(target=load_worker, args=(cfg, there, counter), daemon=True)
            proc.start()
            workers.append((proc, here, counter))
        connect_errors: list[str] = []
        for proc, here, _ in workers:
            _, _, errors = await _recv(here, 60)
            connect_errors += errors
        if connect_errors:
            raise RuntimeError(f"{target.name}: {len(connect_errors)} agents failed to "
                               f"connect: {connect_errors[:5]}\n{target.diagnostics()}")
        wanted = {agent_name(i) for i in range(args.agents)}
        await _poll(lambda: wanted <= target.connected_endpoints(), 60,
                    f"{args.agents} agents connected", target)
        setup_s = time.monotonic() - t_setup

        root = target.root_pid()
        assert root is not None
        node_procs = _tree(root)
        gen_procs = [psutil.Process(p.pid) for p, _, _ in workers]
        main_proc = psutil.Process()

        def snapshot() -> dict[str, Any]:
            busy, total = machine_busy()
            return {"t": time.monotonic(), "delivered": parent.check_results,  # type: ignore[union-attr]
                    "sent": sum(c[0] for _, _, c in workers),
                    "bytes_sent": sum(c[1] for _, _, c in workers),
                    "node_cpu": cpu_seconds(node_procs),
                    "gen_cpu": [cpu_seconds([p]) for p in gen_procs],
                    "main_cpu": cpu_seconds([main_proc]),
                    "machine_busy": busy, "machine_total": total,
                    "parent_bytes": parent.bytes}  # type: ignore[union-attr]

        print(f"[{target.name}] {args.agents} agents connected in {setup_s:.1f} s; "
              f"sending ({args.warmup:g} s warm-up, {args.duration:g} s measured) ...",
              flush=True)
        start_snap = snapshot()
        router_counts0 = await router_counts(target)
        for _, here, _ in workers:
            here.send("go")
        await asyncio.sleep(args.warmup)
        if args.py_spy and target.name == "router":
            pyspy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(root), "--duration", str(int(args.duration)),
                 "--rate", "100", "--format", "raw", "--nonblocking", "--output", args.py_spy],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        others0 = all_cpu()
        s0 = snapshot()
        rss_peak = 0
        rss_samples = []
        window_end = s0["t"] + args.duration
        per_second = []
        last = s0
        while True:
            now = time.monotonic()
            if now >= window_end:
                break
            await asyncio.sleep(min(0.5, window_end - now))
            rss = rss_bytes(node_procs)
            rss_samples.append(rss)
            rss_peak = max(rss_peak, rss)
            snap = snapshot()
            if snap["t"] - last["t"] >= 0.99:
                per_second.append((snap["delivered"] - last["delivered"])
                                  / (snap["t"] - last["t"]))
                last = snap
        s1 = snapshot()
        others1 = all_cpu()
        router_counts1 = await router_counts(target)
        icinga_json_rpc = await icinga_queues(target)
        for _, here, _ in workers:
            here.send("stop")
        stopped = [(await _recv(here, 30))[1] for _, here, _ in workers]
        total_sent = sum(s["sent"] for s in stopped)
        # The backlog in the sockets and in the node still arrives: wait until everything
        # sent arrived, or the node is idle (< 5 % CPU) and nothing arrived for 1 s, or
        # --drain seconds passed.
        drain_start = time.monotonic()
        previous, idle_since = parent.check_results, time.monotonic()
        cpu_before = cpu_seconds(node_procs)
        while time.monotonic() - drain_start < args.drain and parent.check_results < total_sent:
            await asyncio.sleep(0.5)
            cpu_now = cpu_seconds(node_procs)
            busy = cpu_now - cpu_before > 0.025
            cpu_before = cpu_now
            if parent.check_results != previous or busy:
                previous, idle_since = parent.check_results, time.monotonic()
            elif time.monotonic() - idle_since >= 1.0:
                break
        drain_s = time.monotonic() - drain_start
        total_delivered = parent.check_results
        router_counts2 = await router_counts(target)
        if pyspy is not None:
            try:
                _, err = pyspy.communicate(timeout=30)
                if pyspy.returncode != 0:
                    print(f"[router] py-spy failed: {err.decode(errors='replace')[-500:]}")
            except subprocess.TimeoutExpired:
                pyspy.kill()
    finally:
        for proc, here, _ in workers:
            try:
                here.send("close")
            except OSError:
                pass
        for proc, here, _ in workers:
            try:
                await _recv(here, 10)
            except (TimeoutError, EOFError, OSError):
                pass
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if parent is not None and parent.transport is not None:
            parent.transport.close()
        print(f"[{target.name}] stopping the node ...", flush=True)
        target.stop()

    window = s1["t"] - s0["t"]
    delivered = s1["delivered"] - s0["delivered"]
    node_cpu = s1["node_cpu"] - s0["node_cpu"]
    gen_cpu = [b - a for a, b in zip(s0["gen_cpu"], s1["gen_cpu"])]
    main_cpu = s1["main_cpu"] - s0["main_cpu"]
    machine = ((s1["machine_busy"] - s0["machine_busy"])
               / max(1e-9, s1["machine_total"] - s0["machine_total"]))
    lat = sorted(x for t, x in parent.latencies if s0["t"] <= t <= s1["t"])
    ours = {p.pid for p in node_procs} | {p.pid for p in gen_procs} | {os.getpid()}
    outside = collections.Counter()
    for pid, (name, cpu) in others1.items():
        if pid not in ours and pid in others0:
            outside[f"{name}[{pid}]"] = (cpu - others0[pid][1]) / (s1["t"] - s0["t"])
    ours_cores = ((s1["node_cpu"] - s0["node_cpu"]) + sum(s1["gen_cpu"]) - sum(s0["gen_cpu"])
                  + s1["main_cpu"] - s0["main_cpu"]) / (s1["t"] - s0["t"])
    busy_cores = machine * (psutil.cpu_count() or 1)
    # CPU the machine spent that none of our processes account for: other processes
    # (also short-lived ones, which the per-process list misses) and kernel time.
    outside_cores = max(0.0, busy_cores - ours_cores)

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

    per_agent = collections.Counter()
    for s in stopped:
        per_agent.update(s["per_agent_sent"])
    warnings = []
    for k, c in enumerate(gen_cpu):
        if c / window > GEN_SATURATED:
            warnings.append(f"load process {k} used {c / window:.0%} of a core: the generator "
                            f"is saturated, the node may be faster than measured")
    if main_cpu / window > GEN_SATURATED:
        warnings.append(f"the parent/main process used {main_cpu / window:.0%} of a core: "
                        f"the parent may limit the rate")
    if machine > 0.97:
        warnings.append(f"the machine was {machine:.0%} busy ({psutil.cpu_count()} CPUs): "
                        f"node and generator compete for CPU")
    if outside_cores > 0.2:
        top = ", ".join(f"{n} {c:.2f}" for n, c in outside.most_common(3) if c >= 0.01)
        warnings.append(f"{outside_cores:.2f} cores of the machine's CPU during the window "
                        f"are not the node's or the generator's (other processes: "
                        f"{top or 'short-lived ones'}): the numbers are disturbed")
    if delivered == 0:
        warnings.append("nothing was delivered to the parent during the window")
    if parent.bad_samples:
        warnings.append(f"{len(parent.bad_samples)} sampled messages were malformed: "
                        f"{parent.bad_samples[:2]}")
    errs = [e for s in stopped for e in s["errors"]]
    if errs:
        warnings.append(f"{len(errs)} agents had send errors: {errs[:3]}")
    closed = [e for s in stopped for e in s["closed_by_peer"]]
    if closed:
        warnings.append(f"the node closed {len(closed)} agent connections: {closed[:5]}")
    for when, counts in (("at the start", router_counts0), ("at the end of the window",
                                                           router_counts1),
                         ("after the drain", router_counts2)):
        if "error" in counts:
            warnings.append(f"the router's status endpoint failed {when}: {counts['error']}")
    coalesced = router_counts2.get("coalesced", 0)
    if total_delivered + coalesced < total_sent and drain_s >= args.drain - 0.25:
        warnings.append(f"backlog not drained: {total_sent - total_delivered - coalesced} "
                        f"sent CheckResults had not reached the parent after {drain_s:.0f} s")
    elif total_delivered + coalesced < total_sent:
        warnings.append(f"messages lost: the parent got {total_delivered} of {total_sent} "
                        f"sent CheckResults ({coalesced} coalesced by the node) and nothing "
                        f"more arrived for 1 s")
    if coalesced:
        warnings.append(f"the node coalesced {coalesced} of {total_sent} CheckResults "
                        f"({coalesced / max(1, total_sent):.0%}): its queue to the parent was "
                        f"congested and newer results replaced queued ones")
    run_s = (parent.last_arrival - start_snap["t"]) if parent.last_arrival else 0.0
    result = {
        "target": target.name,
        "version": target.version(),
        "window_s": window,
        "delivered": delivered,
        "delivered_per_s": delivered / window,
        "delivered_per_s_each_second": [round(x) for x in per_second],
        "accepted_per_s": (s1["sent"] - s0["sent"]) / window,
        "offered_rate": args.rate or None,
        "sent_mib_per_s": (s1["bytes_sent"] - s0["bytes_sent"]) / window / 2**20,
        "parent_mib_per_s": (s1["parent_bytes"] - s0["parent_bytes"]) / window / 2**20,
        "node_cpu_s": node_cpu,
        "node_cpu_cores": node_cpu / window,
        "node_cpu_s_per_10k": node_cpu / delivered * 10_000 if delivered else None,
        "node_cpu_s_per_10k_accepted": (node_cpu / (s1["sent"] - s0["sent"]) * 10_000
                                        if s1["sent"] > s0["sent"] else None),
        "node_rss_mb_peak": rss_peak / 2**20,
        "node_rss_mb_end": (rss_samples[-1] / 2**20) if rss_samples else None,
        "node_processes": len(node_procs),
        "generator_cpu_cores": [c / window for c in gen_cpu],
        "parent_main_cpu_cores": main_cpu / window,
        "machine_busy_fraction": machine,
        "outside_cpu_cores": outside_cores,
        "outside_top": dict(outside.most_common(5)),
        "total_sent": total_sent,
        "total_delivered": total_delivered,
        "drain_s": drain_s,
        "all_delivered": total_delivered >= total_sent,
        "coalesced_by_node": coalesced,
        "end_to_end_s": run_s,
        "end_to_end_delivered_per_s": total_delivered / run_s if run_s else None,
        "router_counters": {"go": router_counts0, "window_end": router_counts1,
                            "after_drain": router_counts2},
        "in_flight_at_window_end": s1["sent"] - s1["delivered"],
        "icinga_json_rpc_at_window_end": icinga_json_rpc,
        "sent_before_window": s0["sent"] - start_snap["sent"],
        "per_agent_sent_min": min(per_agent.values()) if per_agent else 0,
        "per_agent_sent_max": max(per_agent.values()) if per_agent else 0,
        "sampled_messages": parent.sampled,
        "sampled_agents_seen": len(parent.sample_hosts),
        # every 64th delivered message, per agent: min/max over all agents (0 = starved)
        "sampled_delivered_per_agent_min": min(parent.sample_hosts.get(agent_name(i), 0)
                                               for i in range(args.agents)),
        "sampled_delivered_per_agent_max": max(parent.sample_hosts.values(), default=0),
        "latency_samples_in_window": len(lat),
        "latency_s_p50": pct(0.50),
        "latency_s_p99": pct(0.99),
        "other_methods_at_parent": dict(parent.methods),
        "setup_s": setup_s,
        "warnings": warnings,
    }
    print(f"[{target.name}] {result['delivered_per_s']:.0f} msg/s delivered, node CPU "
          f"{result['node_cpu_cores']:.2f} cores, RSS {result['node_rss_mb_peak']:.0f} MB",
          flush=True)
    for w in warnings:
        print(f"[{target.name}] WARNING: {w}", flush=True)
    return result


# ======================================================================================
# Report
# ======================================================================================

ENTRY_FRAMES = ("(<frozen runpy>)", "(core.py)", "(__main__.py)", "(cli.py)", "(runners.py)",
                "serve (app.py)", "run (__init__.py)", "(run_patched.py)")


def summarize_pyspy(path: str, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(n)
            total += count
            frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                      + ")" if " (" in f else f for f in stack.split(";")]
            self_count[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    lines = [f"py-spy: {total} samples of the router process"]
    lines.append("self%   function (file)")
    for f, c in self_count.most_common(top):
        lines.append(f"{100 * c / total:5.1f}   {f}")
    lines.append("")
    lines.append("incl%   function (file)   (start-up frames: click, runpy, asyncio runner "
                 "left out)")
    shown = [(f, c) for f, c in incl.most_common() if not f.endswith(ENTRY_FRAMES)][:top]
    for f, c in shown:
        lines.append(f"{100 * c / total:5.1f}   {f}")
    return "\n".join(lines)


def print_table(results: list[dict[str, Any]]) -> None:
    cols = [("target", 8, "s"), ("delivered msg/s", 16, ".0f"), ("accepted msg/s", 15, ".0f"),
            ("node CPU s/10k msgs", 20, ".3f"), ("node CPU cores", 15, ".2f"),
            ("node RSS MB", 12, ".1f"), ("latency p50 s", 14, ".2f")]
    keys = ["target", "delivered_per_s", "accepted_per_s", "node_cpu_s_per_10k",
            "node_cpu_cores", "node_rss_mb_peak", "latency_s_p50"]

    def cell(value: Any, width: int, fmt: str) -> str:
        text = "-" if value is None else format(value, fmt)
        return text.ljust(width) if fmt == "s" else text.rjust(width)

    print()
    print(" ".join(name.ljust(w) if i == 0 else name.rjust(w)
                   for i, (name, w, _) in enumerate(cols)))
    for r in results:
        print(" ".join(cell(r[k], w, f) for k, (_, w, f) in zip(keys, cols)))
    by = {r["target"]: r for r in results}
    if "router" in by and "icinga" in by:
        a, b = by["router"], by["icinga"]
        cells = [cell("ratio", 8, "s")]
        for k, (_, w, _) in zip(keys[1:], cols[1:]):
            x, y = a[k], b[k]
            cells.append(cell(x / y if x is not None and y else None, w, ".2f"))
        print(" ".join(cells))
        print("ratio = router/icinga: above 1 is better for msg/s, below 1 is better for CPU "
              "per message, RSS and latency")
    print("delivered = CheckResults the parent received in the window; accepted = what the "
          "agents wrote in the window (node ingest once the socket buffers are full); CPU "
          "s/10k is per 10 000 delivered messages; RSS is the peak during the window")
    for r in results:
        gen = " + ".join(f"{c:.2f}" for c in r["generator_cpu_cores"])
        extra = (f", {r['coalesced_by_node']} coalesced by the node"
                 if r["coalesced_by_node"] else "")
        e2e = r["end_to_end_delivered_per_s"]
        print(f"  {r['target']}: generator CPU {gen} cores (load processes), "
              f"{r['parent_main_cpu_cores']:.2f} (parent/main); machine "
              f"{r['machine_busy_fraction']:.0%} busy; CPU s/10k accepted "
              f"{format(r['node_cpu_s_per_10k_accepted'] or 0, '.3f')}; sent {r['total_sent']}, "
              f"delivered {r['total_delivered']}{extra}; last delivery "
              f"{r['end_to_end_s']:.1f} s after the start ({format(e2e or 0, '.0f')} msg/s "
              f"end to end); latency p99 {format(r['latency_s_p99'] or 0, '.2f')} s; "
              f"per agent: sent {r['per_agent_sent_min']}..{r['per_agent_sent_max']}, "
              f"delivered (1/{SAMPLE_EVERY} sample) {r['sampled_delivered_per_agent_min']}.."
              f"{r['sampled_delivered_per_agent_max']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up before the window, s")
    ap.add_argument("--payload-bytes", type=int, default=1024,
                    help="size of one agent message (JSON), padded in the plugin output")
    ap.add_argument("--workers", type=int, default=2, help="load processes")
    ap.add_argument("--batch", type=int, default=32, help="frames per write+drain")
    ap.add_argument("--agent-sndbuf", type=int, default=65536,
                    help="SO_SNDBUF of each agent socket, bytes (0: kernel autotuning)")
    ap.add_argument("--drain", type=float, default=30.0,
                    help="after the window, wait up to this long for the backlog, s")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered load in msg/s over all agents (0: as fast as accepted)")
    ap.add_argument("--parent-rate", type=float, default=0.0,
                    help="the parent reads at most this many msg/s (a slow master; 0: "
                         "as fast as it can)")
    ap.add_argument("--router-toml", default="",
                    help="TOML appended to the router's config, e.g. '[limits]\\n"
                         "send_queue_high_messages = 100000' (experiments)")
    ap.add_argument("--router-cmd", default="",
                    help="command that runs the router CLI (default: 'PYTHON -m router'); "
                         "'serve --config FILE' is appended (e.g. a patched build)")
    ap.add_argument("--only", choices=["router", "icinga"])
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    ap.add_argument("--py-spy", metavar="FILE",
                    help="record the router with py-spy (raw format) during its window")
    ap.add_argument("--icinga-log-severity", default="information",
                    help="Icinga FileLogger severity (the harness default is debug)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.agents < 1 or args.agents > 1000:
        ap.error("--agents must be 1..1000")
    if args.py_spy and shutil.which("py-spy") is None:
        ap.error("--py-spy needs py-spy on PATH (pip install py-spy)")
    raise_nofile()
    import uvloop

    busy0 = machine_busy()
    time.sleep(1.0)
    busy1 = machine_busy()
    idle_check = (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1])
    if idle_check > 0.10:
        print(f"WARNING: the machine is already {idle_check:.0%} busy before the benchmark "
              f"starts; results will be disturbed", flush=True)
    base = Path(tempfile.mkdtemp(prefix="bench_relay-"))
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        bench_pki = make_pki(base, args.agents)
        kinds = [args.only] if args.only else ["router", "icinga"]
        for kind in kinds:
            if kind == "router":
                target: Target = RouterTarget(base, bench_pki, args.agents, args.router_toml,
                                              args.router_cmd)
            else:
                target = IcingaTarget(base, bench_pki, args.agents, args.icinga_log_severity)
            results.append(uvloop.run(run_target(target, bench_pki, args)))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    import uvloop as _uv
    meta = {
        "benchmark": "relay", "agents": args.agents, "duration_s": args.duration,
        "warmup_s": args.warmup, "payload_bytes": args.payload_bytes,
        "workers": args.workers, "batch": args.batch,
        "cpus": psutil.cpu_count(), "python": platform.python_version(),
        "uvloop": _uv.__version__, "orjson": orjson.__version__,
        "total_run_s": time.monotonic() - started,
        "machine_busy_before_start": idle_check,
    }
    print(f"\n# relay benchmark: {args.agents} agents ({args.workers} load processes), "
          f"{args.payload_bytes}-byte CheckResults, {args.warmup:g} s warm-up + "
          f"{args.duration:g} s window; {meta['cpus']} CPUs, python {meta['python']}, "
          f"uvloop {meta['uvloop']}, orjson {meta['orjson']}")
    for r in results:
        print(f"# {r['target']}: {r['version']}")
    print_table(results)
    for r in results:
        for w in r["warnings"]:
            print(f"WARNING [{r['target']}]: {w}")
    if args.py_spy and os.path.exists(args.py_spy):
        print()
        print(summarize_pyspy(args.py_spy))
    print(f"\ntotal run time {meta['total_run_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
