"""Reload cost with N connected agents: router (in place) vs Icinga 2.13 (SIGHUP).

    python perf/bench_reload.py --endpoints 1000 [--reloads 5] [--rate 500] \\
        [--against icinga2] [--json]

Router: ``router serve`` (a subprocess) as satellite ``sat1``; N emulated agents (TLS,
one process, this one) send ``event::CheckResult`` at ``--rate`` messages/s in total; an
emulated parent ``master`` receives what the node relays and measures each message's
latency (arrival minus the agent's ``execution_end``). Then ``--reloads`` times a
configuration change (spare agent zones added and removed) is applied with ``POST
/v1/actions/reload``, one per second. Reported: time to apply (the reload record's
duration and the HTTP round trip), the node's CPU seconds per reload, p50/p99 routing
latency in the 5 s before the reloads and during them, agent sessions dropped, results
sent vs received by the parent.

Icinga (``--against icinga2``): the same agents connect to a real Icinga 2.13 satellite
with the same zones; the configuration is changed the same way and the daemon gets
SIGHUP (what ``systemctl reload icinga2`` does). Reported: sessions dropped and the time
until every agent is connected again; agents redial 1 s after a drop (real agents wait
for their reconnect timer, 10 s, so this is Icinga's best case).

Everything binds 127.0.0.1. The node and the agents share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.benchpki import BenchPKI, make_pki  # noqa: E402
from perf.icinga import IcingaNode, find_icinga2, free_port  # noqa: E402
from perf.wire import HELLO, MASTER, SAT, agent_name, client_context, netstring  # noqa: E402

SPARES = 10


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- peers


class Agent:
    """One emulated agent: connects, says Hello, sends results, redials when dropped."""

    def __init__(self, name: str, ctx: ssl.SSLContext, port: int, redial: bool) -> None:
        self.name, self.ctx, self.port, self.redial = name, ctx, port, redial
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.drops = 0
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=self.ctx, server_hostname=SAT)
            except (OSError, ssl.SSLError):
                await asyncio.sleep(1.0)
                continue
            writer.write(HELLO)
            self.writer = writer
            self.connected.set()
            try:
                while await reader.read(65536):
                    pass
            except (OSError, ssl.SSLError):
                pass
            self.writer = None
            self.connected.clear()
            self.drops += 1
            if not self.redial:
                return
            await asyncio.sleep(1.0)

    def send_result(self) -> bool:
        if self.writer is None:
            return False
        now = time.time()
        message = {"jsonrpc": "2.0", "method": "event::CheckResult", "ts": now, "params": {
            "host": self.name, "service": "svc",
            "cr": {"type": "CheckResult", "state": 0, "exit_status": 0, "output": "OK",
                   "execution_start": now, "execution_end": now, "schedule_start": now,
                   "schedule_end": now, "active": True, "check_source": self.name,
                   "performance_data": [], "vars_before": None,
                   "vars_after": {"attempt": 1, "reachable": True, "state": 0,
                                  "state_type": 1}}}}
        self.writer.write(netstring(orjson.dumps(message)))
        self.sent += 1
        return True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.writer is not None:
            self.writer.close()


class Parent:
    """The emulated master: receives relayed results, records (arrival, latency)."""

    def __init__(self) -> None:
        self.latencies: list[tuple[float, float]] = []
        self.received = 0
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int, ctx: ssl.SSLContext) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname=SAT)
        writer.write(HELLO)
        self.writer = writer          # a collected StreamWriter closes its connection
        self._task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buf = b""
        while True:
            data = await reader.read(262144)
            if not data:
                return
            buf += data
            while True:
                colon = buf.find(b":")
                if colon < 0:
                    break
                length = int(buf[:colon])
                if len(buf) < colon + length + 2:
                    break
                payload = buf[colon + 1: colon + 1 + length]
                buf = buf[colon + length + 2:]
                if b"event::CheckResult" not in payload:
                    continue
                now = time.time()
                msg = orjson.loads(payload)
                self.received += 1
                self.latencies.append((now, now - msg["params"]["cr"]["execution_end"]))


async def pace(agents: list[Agent], rate: float, stop: asyncio.Event) -> None:
    """Send ``rate`` results per second in total, round-robin, in 20 ms ticks."""
    index = 0
    due = 0.0
    while not stop.is_set():
        due += rate * 0.02
        while due >= 1:
            due -= 1
            agents[index % len(agents)].send_result()
            index += 1
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- configs


def router_toml(base: Path, bench: BenchPKI, n: int, spares: int, port: int,
                status_port: int) -> str:
    lines = ['log_level = "info"', f'listen = "127.0.0.1:{port}"',
             f'status_listen = "127.0.0.1:{status_port}"', "[node]", f'name = "{SAT}"',
             f'data_dir = "{base / "router-data"}"', "[tls]", f'ca = "{bench.ca_cert}"',
             f'cert = "{bench.cert(SAT)}"', f'key = "{bench.key(SAT)}"',
             "[[zones]]", 'name = "master"', f'endpoints = ["{MASTER}"]',
             "[[zones]]", 'name = "satellite"', f'endpoints = ["{SAT}"]', 'parent = "master"']
    names = [agent_name(i) for i in range(n)] + [f"spare-{i}" for i in range(spares)]
    for name in names:
        lines += ["[[zones]]", f'name = "{name}"', f'endpoints = ["{name}"]',
                  'parent = "satellite"']
    for name in [MASTER, SAT, *names]:
        lines += ["[[endpoints]]", f'name = "{name}"']
    return "\n".join(lines) + "\n"


def post_reload(status_port: int, data_dir: Path) -> dict[str, Any]:
    """What router reload does: POST with the node's local token from its data dir."""
    token = (data_dir / "reload.token").read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{status_port}/v1/actions/reload",
                                     data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        record: dict[str, Any] = orjson.loads(resp.read())
    return record


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


# --------------------------------------------------------------------------- runs


async def connect_agents(bench: BenchPKI, n: int, port: int, redial: bool) -> list[Agent]:
    agents = []
    key = bench.out_dir / "agents.key"
    for i in range(n):
        name = agent_name(i)
        agents.append(Agent(name, client_context(bench.ca_cert, bench.cert(name), key), port,
                            redial))
    for agent in agents:
        agent.start()
        await asyncio.sleep(0.002)        # 500 dials/s: the node is not the bottleneck here
    await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 300)
    return agents


async def run_router(base: Path, bench: BenchPKI, args: argparse.Namespace) -> dict[str, Any]:
    port, status_port = free_port(), free_port()
    config = base / "router.toml"
    config.write_text(router_toml(base, bench, args.endpoints, 0, port, status_port))
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=open(base / "router.err", "wb"))
    assert proc.stdout is not None
    await asyncio.to_thread(proc.stdout.readline)
    node = psutil.Process(proc.pid)
    parent = Parent()
    try:
        await parent.connect(port, client_context(bench.ca_cert, bench.cert(MASTER),
                                                  bench.key(MASTER)))
        started = time.monotonic()
        agents = await connect_agents(bench, args.endpoints, port, redial=False)
        connect_time = time.monotonic() - started
        stop = asyncio.Event()
        pacer = asyncio.ensure_future(pace(agents, args.rate, stop))
        await asyncio.sleep(5.0)
        baseline_from, reload_from = time.time() - 5.0, time.time()
        records = []
        for i in range(args.reloads):
            config.write_text(router_toml(base, bench, args.endpoints,
                                          SPARES if i % 2 == 0 else SPARES // 2, port,
                                          status_port))
            cpu0, t0 = cpu_seconds(node), time.perf_counter()
            record = await asyncio.to_thread(post_reload, status_port, base / "router-data")
            wall = time.perf_counter() - t0
            await asyncio.sleep(0.2)
            records.append({"apply_s": record["duration"], "http_s": wall,
                            "cpu_s": cpu_seconds(node) - cpu0, "result": record["result"],
                            "closed": len(record["sessions_closed"])})
            await asyncio.sleep(0.8)
        reload_to = time.time()
        stop.set()
        await pacer
        sent = sum(a.sent for a in agents)
        await asyncio.sleep(2.0)
        base_lat = [lat for at, lat in parent.latencies if baseline_from <= at < reload_from]
        during = [lat for at, lat in parent.latencies if reload_from <= at < reload_to]
        result = {
            "target": "router", "endpoints": args.endpoints, "connect_s": connect_time,
            "reloads": records,
            "apply_ms_median": statistics.median(r["apply_s"] for r in records) * 1000,
            "apply_ms_max": max(r["apply_s"] for r in records) * 1000,
            "cpu_ms_per_reload": statistics.mean(r["cpu_s"] for r in records) * 1000,
            "p50_ms_before": pct(base_lat, 0.5) * 1000, "p99_ms_before": pct(base_lat, 0.99) * 1000,
            "p50_ms_during": pct(during, 0.5) * 1000, "p99_ms_during": pct(during, 0.99) * 1000,
            "sessions_dropped": sum(a.drops for a in agents),
            "results_sent": sent, "results_received": parent.received,
        }
        for agent in agents:
            agent.stop()
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def run_icinga(base: Path, bench: BenchPKI, args: argparse.Namespace) -> dict[str, Any]:
    names = [agent_name(i) for i in range(args.endpoints)]

    def zones(spares: int) -> list[dict[str, Any]]:
        spare = [f"spare-{i}" for i in range(spares)]
        return ([{"name": "master", "endpoints": [MASTER]},
                 {"name": "satellite", "endpoints": [SAT], "parent": "master"}]
                + [{"name": z, "endpoints": [z], "parent": "satellite"} for z in names + spare])

    def endpoints(spares: int) -> list[dict[str, Any]]:
        return [{"name": e} for e in [MASTER, SAT, *names,
                                      *(f"spare-{i}" for i in range(spares))]]

    node = IcingaNode(base / "icinga", SAT, "satellite", api_port=free_port(),
                      endpoints=endpoints(0), zones=zones(0), checker=False,
                      accept_commands=False, accept_config=False)
    node.install_certs(bench.ca_cert, bench.cert(SAT), bench.key(SAT))
    node.start(timeout=120)
    try:
        agents = await connect_agents(bench, args.endpoints, node.api_port, redial=True)
        await asyncio.sleep(2.0)
        node.endpoints, node.zones = endpoints(SPARES), zones(SPARES)
        node.write_config()
        started = time.monotonic()
        assert node.pid is not None
        os.kill(node.pid, signal.SIGHUP)
        # wait for the drop (the old worker exits after the new one validated), then for
        # every agent to be back
        while time.monotonic() - started < 300 and sum(a.drops for a in agents) == 0:
            await asyncio.sleep(0.05)
        dropped_at = time.monotonic() - started
        while time.monotonic() - started < 300 and not all(a.connected.is_set()
                                                            for a in agents):
            await asyncio.sleep(0.05)
        back = time.monotonic() - started
        await asyncio.sleep(3.0)
        result = {"target": "icinga2", "endpoints": args.endpoints,
                  "sessions_dropped": sum(a.drops for a in agents),
                  "first_drop_s": dropped_at, "all_back_s": back}
        for agent in agents:
            agent.stop()
        return result
    finally:
        node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--against", choices=["icinga2"], default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", help="keep the work directory here (logs, configs)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        base = Path(args.keep or tmp)
        base.mkdir(parents=True, exist_ok=True)
        bench = make_pki(base / "pki", args.endpoints, shared_key=True)
        results.append(asyncio.run(run_router(base, bench, args)))
        if args.against == "icinga2":
            if find_icinga2() is None:
                print("icinga2 not found; skipping the comparison", file=sys.stderr)
            else:
                results.append(asyncio.run(run_icinga(base, bench, args)))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        for result in results:
            print(f"== {result['target']}, {result['endpoints']} agents")
            for key, value in result.items():
                if key not in ("target", "endpoints", "reloads"):
                    print(f"  {key:22} {value:.3f}" if isinstance(value, float)
                          else f"  {key:22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
