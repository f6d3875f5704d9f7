"""Config sync relay: one parent update of N agent zones -> satellite -> N agents.

    python perf/bench_configsync.py [--agents 5000] [--zone-kb 20] [--only router|icinga] \\
        [--json FILE] [--timeout 900] [--keep DIR]

The satellite ``sat1`` (zone ``satellite``, parent zone ``master``, one child zone
``agent-NNN`` per agent, and the global zone ``global-templates``), with accept_config:

- **router**: ``python -m router serve`` (``perf.targets.RouterTarget``) with ``[node]
  accept_config = true`` and the limits raised for a ~100 MB update
  (``max_config_update_bytes``, ``max_message_size_peer``);
- **icinga**: a real Icinga 2.13 satellite (``perf.targets.IcingaTarget``, without its
  per-agent Host/Service objects, which the synced zones define) with ``accept_config =
  true`` on its ApiListener.

An emulated parent ``master`` connects and sends one ``config::Update`` in the shape
Icinga 2.13 sends (``update``, ``update_v2`` with ``/.timestamp`` and ``/.checksums``,
``checksums``; see docs/config-sync.md) holding the satellite's zone, the global zone
and the N agent zones, each ``/_etc/hosts.conf`` of about ``--zone-kb`` KiB (one Host
and ~1 KiB Services, valid Icinga DSL: Icinga validates what it receives). The N
emulated agents (one process, this one; each with its own certificate from
``perf.benchpki``) are connected beforehand; each counts the bytes it receives and the
time until a ``config::Update`` holding its zone arrives, and checks that the update
holds exactly its zone and the global zone, with the files the parent sent. Agents
dropped by the satellite redial after 1 s (an Icinga satellite restarts to activate a
new configuration and sends its children their zones when they reconnect; real agents
wait for their 10 s reconnect timer, so this is Icinga's best case).

Reported per target: bytes received by all agents from the parent's update until the
last agent had its zone, time from the parent's update to the last agent's (and the
median agent's) update, the satellite's CPU seconds in that time (its process tree,
exited children such as Icinga's validation process and old worker included) and peak
RSS, agents that got exactly their zone, agent sessions dropped. Everything binds
127.0.0.1; the satellite, the parent and the agents share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import orjson
import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.benchpki import BenchPKI, make_pki  # noqa: E402
from perf.measure import process_tree, raise_nofile  # noqa: E402
from perf.targets import IcingaTarget, RouterTarget, Target  # noqa: E402
from perf.wire import HELLO, MASTER, SAT, agent_name, client_context, netstring  # noqa: E402

GLOBAL = "global-templates"
REDIAL_S = 1.0
DIALS_IN_FLIGHT = 64
UPDATE = b'"config::Update"'
HEARTBEAT_S = 10.0          # Icinga closes a session it heard nothing on for 60 s
HEARTBEAT = netstring(orjson.dumps({"jsonrpc": "2.0", "method": "event::Heartbeat",
                                    "params": {"timeout": 120.0}}))

GLOBAL_CONF = """object CheckCommand "bench-alive" {
  command = [ "/bin/true" ]
}

template Host "bench-host" {
  check_command = "bench-alive"
  enable_active_checks = false
}

template Service "bench-service" {
  check_command = "bench-alive"
  enable_active_checks = false
}
"""


# --------------------------------------------------------------------------- the update


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def agent_conf(name: str, size: int) -> str:
    """About ``size`` bytes of Icinga DSL: the agent's Host and ~1 KiB Services."""
    parts = [f'object Host "{name}" {{\n  import "bench-host"\n  address = "127.0.0.1"\n}}\n']
    total, i = len(parts[0]), 0
    while total < size:
        head = (f'\nobject Service "svc-{i:03d}" {{\n  import "bench-service"\n'
                f'  host_name = "{name}"\n  vars.description = "')
        tail = '"\n}\n'
        room = max(16, min(900, size - total - len(head) - len(tail)))
        words = f"service {i} of {name}, benchmark padding " * (room // 30 + 1)
        block = head + words[:room] + tail
        parts.append(block)
        total += len(block)
        i += 1
    return "".join(parts)


def build_update(agents: int, zone_kb: int) -> dict[str, Any]:
    """The params of the parent's ``config::Update``, as Icinga 2.13 fills them."""
    ts = "%.6f" % time.time()
    zones = {"satellite": {"/_etc/hosts.conf": 'object Host "sat1-self" {\n'
                                               '  import "bench-host"\n}\n'},
             GLOBAL: {"/_etc/templates.conf": GLOBAL_CONF}}
    for i in range(agents):
        name = agent_name(i)
        zones[name] = {"/_etc/hosts.conf": agent_conf(name, zone_kb * 1024)}
    params: dict[str, Any] = {"checksums": {}, "update": {}, "update_v2": {}}
    for name, etc in zones.items():
        v2 = {"/.checksums": json.dumps({p: sha(t) for p, t in sorted(etc.items())}),
              "/.timestamp": ts}
        params["update"][name] = etc
        params["update_v2"][name] = v2
        params["checksums"][name] = {p: sha(t) for p, t in {**etc, **v2}.items()}
    return params


# --------------------------------------------------------------------------- peers


class Agent(asyncio.Protocol):
    """One emulated agent: TLS, Hello, counts bytes, waits for its zone's update."""

    def __init__(self, name: str, ctx: ssl.SSLContext, port: int, sent: dict[str, Any],
                 sem: asyncio.Semaphore) -> None:
        self.name, self.ctx, self.port, self.sent, self.sem = name, ctx, port, sent, sem
        self.buf = bytearray()
        self.received = 0               # plaintext bytes, whole run
        self.first_frame = asyncio.Event()
        self.got_at: float | None = None
        self.exact = False
        self.zones: list[str] = []
        self.drops = 0
        self.closing = False
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is not a subclass
        self.transport.write(HELLO)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.first_frame.set()
        buf = self.buf
        buf += data
        pos = 0
        while True:
            colon = buf.find(b":", pos, pos + 12)
            if colon < 0:
                break
            end = colon + 1 + int(buf[pos:colon])
            if end >= len(buf):
                break
            if buf.find(UPDATE, colon + 1, colon + 200) >= 0:
                self._update(bytes(buf[colon + 1:end]))
            pos = end + 1
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buf.clear()
        self.first_frame.clear()
        if not self.closing:
            self.drops += 1
            self._retry()

    def _update(self, payload: bytes) -> None:
        update = orjson.loads(payload)["params"].get("update") or {}
        if self.name not in update or self.got_at is not None:
            return
        self.got_at = time.monotonic()
        self.zones = sorted(update)
        self.exact = (set(update) == {self.name, GLOBAL}
                      and update[self.name] == self.sent[self.name]
                      and update[GLOBAL] == self.sent[GLOBAL])

    async def dial(self) -> None:
        """Connect (at most DIALS_IN_FLIGHT agents at a time until their first frame)."""
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        try:
            async with self.sem:
                await loop.create_connection(lambda: self, "127.0.0.1", self.port,
                                             ssl=self.ctx, server_hostname=SAT)
                await asyncio.wait_for(self.first_frame.wait(), 60)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            self._retry()

    def _retry(self) -> None:
        if not self.closing and self.transport is None:
            asyncio.get_running_loop().call_later(
                REDIAL_S, lambda: asyncio.ensure_future(self.dial()))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class Parent(asyncio.Protocol):
    """The emulated master: says Hello, reads and drops what the satellite sends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.first_frame = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is not a subclass
        self.transport.write(HELLO)

    def data_received(self, data: bytes) -> None:
        self.first_frame.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def heartbeats(agents: list[Agent]) -> None:
    """``event::Heartbeat`` from every connected agent every HEARTBEAT_S, as agents do."""
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        for agent in agents:
            if agent.transport is not None and agent.first_frame.is_set():
                agent.transport.write(HEARTBEAT)


# --------------------------------------------------------------------------- measuring


class Sampler:
    """The satellite's process tree: CPU (exited, reaped children included) and peak RSS."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._task: asyncio.Task[None] | None = None

    def cpu(self) -> float:
        total = 0.0
        for proc in process_tree(self.pid):
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def sample_rss(self) -> None:
        rss = 0
        for proc in process_tree(self.pid):
            try:
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.peak_rss = max(self.peak_rss, rss)

    async def _run(self) -> None:
        while True:
            self.sample_rss()
            await asyncio.sleep(0.25)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores) so far."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0))


def own_cpu() -> float:
    """This process's CPU seconds: the parent and the agents."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


# --------------------------------------------------------------------------- one target


def make_target(kind: str, base: Path, bench: BenchPKI, n: int) -> Target:
    if kind == "router":
        extra = ("[node]\naccept_config = true\n"
                 '[limits]\nmax_config_update_bytes = "1GiB"\n'
                 'max_message_size_peer = "1GiB"\n'
                 f'[[zones]]\nname = "{GLOBAL}"\nglobal = true\n')
        return RouterTarget(base, bench, n, extra_toml=extra)
    target = IcingaTarget(base, bench, n, "information")
    node = target.node
    node.services = ""                       # the synced zones define the agents' hosts
    node.accept_config = True
    node.zones.append({"name": GLOBAL, "global": True})
    node.write_config()
    return target


async def run_target(kind: str, base: Path, bench: BenchPKI, n: int,
                     params: dict[str, Any], frame: bytes, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    target = make_target(kind, base, bench, n)
    version = target.version()
    print(f"[{kind}] starting {version} with {n} agent zones", file=sys.stderr)
    await asyncio.to_thread(target.start)
    agents: list[Agent] = []
    sampler: Sampler | None = None
    beating = asyncio.ensure_future(heartbeats(agents))
    try:
        pid = target.root_pid()
        assert pid is not None
        port = target.port
        parent = Parent()
        await loop.create_connection(
            lambda: parent, "127.0.0.1", port, server_hostname=SAT,
            ssl=client_context(bench.ca_cert, bench.cert(MASTER), bench.key(MASTER)))
        key = bench.out_dir / "agents.key"
        sem = asyncio.Semaphore(DIALS_IN_FLIGHT)
        agents.extend(Agent(agent_name(i),
                            client_context(bench.ca_cert, bench.cert(agent_name(i)), key),
                            port, params["update"], sem) for i in range(n))
        started = time.monotonic()
        await asyncio.gather(*(a.dial() for a in agents))
        while not all(a.first_frame.is_set() for a in agents):
            if time.monotonic() - started > timeout:
                raise TimeoutError("agents did not all connect")
            await asyncio.sleep(0.1)
        connect_s = time.monotonic() - started
        print(f"[{kind}] {n} agents connected in {connect_s:.1f} s", file=sys.stderr)
        await asyncio.sleep(2.0)
        sampler = Sampler(pid)
        sampler.start()
        bytes0 = sum(a.received for a in agents)
        cpu0 = sampler.cpu()
        machine0, own0 = busy_seconds(), own_cpu()
        assert parent.transport is not None
        t0 = time.monotonic()
        parent.transport.write(frame)
        last_report = t0
        while not all(a.got_at is not None for a in agents):
            now = time.monotonic()
            if now - t0 > timeout:
                print(f"[{kind}] timeout after {timeout:.0f} s", file=sys.stderr)
                break
            if now - last_report >= 5:
                last_report = now
                print(f"[{kind}] {now - t0:.0f} s: "
                      f"{sum(a.got_at is not None for a in agents)}/{n} agents have their "
                      f"zone, {sum(a.transport is not None for a in agents)} connected",
                      file=sys.stderr)
            await asyncio.sleep(0.05)
        done = [a.got_at - t0 for a in agents if a.got_at is not None]
        cpu = sampler.cpu() - cpu0
        machine, own = busy_seconds() - machine0, own_cpu() - own0
        sampler.sample_rss()
        received = sum(a.received for a in agents) - bytes0
        return {
            "target": kind, "version": version, "agents": n,
            "zone_kb": len(params["update"][agent_name(0)]["/_etc/hosts.conf"]) / 1024,
            "update_bytes": len(frame), "connect_s": connect_s,
            "agents_with_zone": len(done), "agents_exact": sum(a.exact for a in agents),
            "agents_foreign_zones": sum(bool(set(a.zones) - {a.name, GLOBAL}) for a in agents),
            "bytes_received": received,
            "last_agent_s": max(done) if done else None,
            "first_agent_s": min(done) if done else None,
            "median_agent_s": statistics.median(done) if done else None,
            "cpu_s": cpu, "peak_rss_mb": sampler.peak_rss / 2**20,
            "sessions_dropped": sum(a.drops for a in agents),
            "bench_cpu_s": own, "machine_busy_s": machine,
            "other_cpu_s": max(0.0, machine - own - cpu),
            "timed_out": len(done) < n,
        }
    finally:
        beating.cancel()
        if sampler is not None:
            sampler.stop()
        for agent in agents:
            agent.close()
        await asyncio.to_thread(target.stop)


# --------------------------------------------------------------------------- output


COLUMNS = [("target", "target", "{}"), ("agents", "agents", "{}"),
           ("exact zone", "agents_exact", "{}"), ("MB to agents", "bytes_received", "{:.1f}"),
           ("last agent s", "last_agent_s", "{:.2f}"), ("median s", "median_agent_s", "{:.2f}"),
           ("CPU s", "cpu_s", "{:.1f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
           ("dropped", "sessions_dropped", "{}")]


def cell(result: dict[str, Any], key: str, fmt: str) -> str:
    value = result.get(key)
    if value is None:
        return "-"
    if key == "bytes_received":
        value = value / 1e6
    return fmt.format(value)


def table(results: list[dict[str, Any]]) -> str:
    rows = [[c[0] for c in COLUMNS]]
    rows += [[cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in results]
    by = {r["target"]: r for r in results}
    if "router" in by and "icinga" in by and by["router"]["agents"] == by["icinga"]["agents"]:
        ratio = ["ratio"]
        for _, key, _fmt in COLUMNS[1:]:
            a, b = by["router"].get(key), by["icinga"].get(key)
            ratio.append(f"{a / b:.2f}" if isinstance(a, (int, float)) and
                         isinstance(b, (int, float)) and b else "-")
        rows.append(ratio)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--zone-kb", type=int, default=20)
    parser.add_argument("--only", choices=["router", "icinga"])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="bound per target for connecting and for the relay (s)")
    parser.add_argument("--keep", metavar="DIR", help="keep the work directory here")
    args = parser.parse_args(argv)
    raise_nofile()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    kinds = [args.only] if args.only else ["router", "icinga"]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-configsync-") as tmp:
        base = Path(args.keep or tmp)
        base.mkdir(parents=True, exist_ok=True)
        bench = make_pki(base / "pki", args.agents, shared_key=True)
        params = build_update(args.agents, args.zone_kb)
        frame = orjson.dumps({"jsonrpc": "2.0", "method": "config::Update", "params": params})
        frame = b"%d:%b," % (len(frame), frame)
        print(f"update: {len(frame) / 1e6:.1f} MB, {args.agents} agent zones of "
              f"{args.zone_kb} KiB", file=sys.stderr)
        for kind in kinds:
            # the whole target (start, connect, relay, stop) is bounded
            results.append(asyncio.run(asyncio.wait_for(
                run_target(kind, base / kind, bench, args.agents, params, frame, args.timeout),
                3 * args.timeout)))
    print(f"config::Update of {results[0]['update_bytes'] / 1e6:.1f} MB: "
          f"{args.agents} agent zones of {args.zone_kb} KiB + satellite + global zone")
    for r in results:
        print(f"  {r['target']}: {r['version']}; agents connected in {r['connect_s']:.1f} s")
    print(table(results))
    for r in results:
        print(f"  {r['target']}: parent and agents (this process) {r['bench_cpu_s']:.1f} CPU s; "
              f"machine busy {r['machine_busy_s']:.1f} CPU s, of which "
              f"{r['other_cpu_s']:.1f} s neither the satellite nor this process; "
              f"first agent {r['first_agent_s'] or 0:.2f} s")
        if r["other_cpu_s"] > 0.1 * max(r["machine_busy_s"], 1.0):
            print(f"WARNING [{r['target']}]: {r['other_cpu_s']:.1f} CPU s of the machine went to "
                  "something that is not the benchmark (another job): rerun")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0 if all(not r["timed_out"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
