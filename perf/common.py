"""Shared pieces of the relay benchmarks (``bench_relay.py`` and ``router perf``).

Moved out of ``perf/bench_relay.py``: the benchmark PKI, the node under test (our router
as a ``python -m router serve`` subprocess, or a real Icinga 2 from
``perf/icinga.py``), the emulated agent and its load process, the emulated
parent, and the process/CPU helpers.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: The repository checkout (the interop harness in tests/ lives there).
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import orjson
import psutil
from cryptography.hazmat.primitives import serialization

from router import pki

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


def log_position_frame(position: float) -> bytes:
    """The emulated parent's ``log::SetLogPosition``: it has every message up to
    ``position``, so the node may forget them (and replays only what is newer)."""
    return netstring(orjson.dumps({"jsonrpc": "2.0", "method": "log::SetLogPosition",
                                   "params": {"log_position": position}, "ts": time.time()}))


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


def make_pki(base: Path, agents: int, shared_key: bool = False,
             key_type: str = "ec") -> BenchPKI:
    """One CA; certificates for sat1, master and every agent (CN = SAN = name).

    ``shared_key``: all agents share one key (``agents.key``) and get one certificate
    each; issuing N certificates for one key is much faster than generating N keys.
    ``key_type``: every key, the CA's included (:data:`router.pki.KEY_TYPES`; ``rsa4096``
    is what an Icinga CA and ``icinga2 pki new-cert`` make).
    """
    ca_dir, out_dir = base / "ca", base / "issued"
    pki.create_ca(ca_dir, common_name="Bench Relay CA", key_type=key_type)
    ca_cert, ca_key = pki.load_ca(ca_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agent_key = None
    if shared_key:
        _, agent_key = pki.issue_certificate(ca_cert, ca_key, agent_name(0), key_type=key_type)
        pki.write_private_key(out_dir / "agents.key", agent_key)  # type: ignore[arg-type]
    for name in [SAT, MASTER]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, key_type=key_type)
        pki.write_private_key(out_dir / f"{name}.key", key)  # type: ignore[arg-type]
        pki.write_certificate(out_dir / f"{name}.crt", cert)
    for name in [agent_name(i) for i in range(agents)]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, key=agent_key,
                                          key_type=key_type)
        if agent_key is None:
            pki.write_private_key(out_dir / f"{name}.key", key)  # type: ignore[arg-type]
        write_agent_chain(out_dir / f"{name}.crt", cert, ca_cert)
    return BenchPKI(ca_dir, out_dir)


def write_agent_chain(path: Path, cert: Any, ca_cert: Any) -> None:
    """An emulated agent's certificate file: its certificate, then the CA's.

    That chain is what an Icinga agent sends: its file names only its own certificate,
    and OpenSSL completes the chain from the CA store on every handshake. Given the chain
    up front, the emulated agent sends the same bytes and skips that search (about 0.1 ms
    a handshake, CPU the node under test shares).
    """
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                     + ca_cert.public_bytes(serialization.Encoding.PEM))


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
    def exited(self) -> int | None:
        """The exit code when the node we started has exited (negative: killed by that
        signal); None while it runs, or when we did not start it."""
        return None
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


def merge_toml(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge a parsed TOML document into ``base``: tables key by key (so extra ``[tls]``
    or ``[timeouts]`` keys join ours instead of defining the table twice), arrays of
    tables appended, other values replaced."""
    for key, value in extra.items():
        mine = base.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            merge_toml(mine, value)
        elif (isinstance(mine, list) and isinstance(value, list) and value
              and all(isinstance(v, dict) for v in value)):
            mine.extend(value)
        else:
            base[key] = value


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else orjson.dumps(
        key).decode()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return orjson.dumps(value).decode()       # JSON numbers and strings are TOML too
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {type(value).__name__} {value!r} as TOML")


def dump_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """TOML text for a document of tables, arrays of tables and plain values (what a
    router configuration holds; dates are not needed)."""
    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not is_tables(v)]
    for key, value in doc.items():
        path = f"{prefix}{_toml_key(key)}"
        if isinstance(value, dict):
            lines += ["", f"[{path}]", dump_toml(value, f"{path}.").rstrip("\n")]
        elif is_tables(value):
            for item in value:
                lines += ["", f"[[{path}]]", dump_toml(item, f"{path}.").rstrip("\n")]
    return "\n".join(lines) + "\n"


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
        doc: dict[str, Any] = {
            "log_level": "info",
            "listen": f"127.0.0.1:{self.port}",
            "status_listen": f"127.0.0.1:{self.status_port}",
            "node": {"name": SAT, "data_dir": str(self.dir / "data")},
            "tls": {"ca": str(bench_pki.ca_cert), "cert": str(bench_pki.cert(SAT)),
                    "key": str(bench_pki.key(SAT))},
            "timeouts": {"drain": 2},
            "zones": [{"name": MASTER, "endpoints": [MASTER]},
                      {"name": "satellite", "endpoints": [SAT], "parent": MASTER}]
            + [{"name": agent_name(i), "endpoints": [agent_name(i)], "parent": "satellite"}
               for i in range(agents)],
            "endpoints": [{"name": ep}
                          for ep in [MASTER, SAT] + [agent_name(i) for i in range(agents)]],
        }
        if extra_toml:
            try:
                extra = tomllib.loads(extra_toml.replace("\\n", "\n"))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"TOML for the router's configuration: {exc}") from None
            merge_toml(doc, extra)
        self.config_path.write_text(dump_toml(doc))

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

    def status(self, query: str = "") -> dict[str, Any]:
        """/v1/status, or the part ``query`` asks for (``sections=connections``): a poller
        must not make the node build 5 000 endpoint entries it does not read."""
        return orjson.loads(self._get("/v1/status" + (f"?{query}" if query else "")))

    def connected_endpoints(self) -> set[str]:
        return {e["name"] for e in self.status()["endpoints"]
                if e["connected"] and e["name"] != SAT}

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

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
        from perf.icinga import IcingaNode, find_icinga2

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

    def exited(self) -> int | None:
        return self.node.exit_code()

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


async def close_agents(agents: list[Any], conn: Any) -> None:
    """Close every agent's session, then tell the main process (``("closed",)``)."""
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
    try:
        conn.send(("closed",))
    except OSError:
        pass             # the main process is gone already


def pipe_commands(conn: Any, close: Any, is_close: Any) -> asyncio.Queue[Any]:
    """Commands from the main process's pipe, as an asyncio queue of the running loop.

    A daemon thread blocks in ``conn.recv()``; a closed pipe counts as ``close``, and
    the thread ends after the first command ``is_close`` accepts.
    """
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def pump() -> None:
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                cmd = close
            loop.call_soon_threadsafe(commands.put_nowait, cmd)
            if is_close(cmd):
                return

    threading.Thread(target=pump, daemon=True).start()
    return commands


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


def stamped_frames(template: bytes, last: int, batch: int) -> tuple[bytes, int]:
    """``batch`` framed CheckResults from ``template`` with strictly increasing stamps.

    Each message gets its own microsecond (after ``last``, the previous batch's final
    one), used for execution_end/start, schedule_start and ts, because Icinga drops results
    whose stamps do not increase per agent. Returns the frames and the new ``last``.
    """
    now = int(time.time() * 1e6)
    first = now if now > last else last + 1
    frames = []
    for us in range(first, first + batch):
        end = b"%d.%06d" % divmod(us, 1_000_000)
        start = b"%d.%06d" % divmod(us - 1000, 1_000_000)
        sched = b"%d.%06d" % divmod(us - 2000, 1_000_000)
        payload = template % (end, start, end, sched, end)
        frames.append(b"%d:%b," % (len(payload), payload))
    return b"".join(frames), first + batch - 1


def scan_frames(buf: bytearray, methods: Any,
                on_check_result: Callable[[bytearray, int, int], None]) -> int:
    """Consume the complete netstring frames at the start of ``buf``.

    An emulated parent must not parse every result (it would become the bottleneck): a
    frame whose first 200 bytes name ``event::CheckResult`` is handed to
    ``on_check_result(buf, start, end)`` unparsed; any other frame is parsed and counted
    in ``methods`` by method. Returns the number of those other frames.
    """
    pos, n, find = 0, len(buf), buf.find
    other = 0
    while True:
        colon = find(b":", pos, pos + 12)
        if colon < 0:
            break
        size = int(buf[pos:colon])
        end = colon + 1 + size
        if end >= n:
            break
        if find(CHECK_RESULT, colon + 1, colon + 1 + min(size, 200)) >= 0:
            on_check_result(buf, colon + 1, end)
        else:
            other += 1
            try:
                methods[orjson.loads(bytes(buf[colon + 1:end])).get("method", "?")] += 1
            except orjson.JSONDecodeError:
                methods["(bad json)"] += 1
        pos = end + 1
    if pos:
        del buf[:pos]
    return other


async def recv_from(conn: Any, timeout: float) -> Any:
    """Receive from a load process's pipe without blocking the loop."""
    def get() -> Any:
        if not conn.poll(timeout):
            raise TimeoutError("load process did not answer")
        return conn.recv()
    return await asyncio.to_thread(get)


async def stop_workers(workers: list[tuple[Any, Any, Any]], close_message: Any,
                       timeout: float) -> None:
    """Ask every load process to close, wait for its answer, then join (or terminate)."""
    for _, pipe, _ in workers:
        try:
            pipe.send(close_message)
        except OSError:
            pass
    for proc, pipe, _ in workers:
        try:
            await recv_from(pipe, timeout)
        except (TimeoutError, EOFError, OSError):
            pass
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
