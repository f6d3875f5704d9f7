"""The web console's document at scale: how long ``/v1/console`` takes at N endpoints.

    python perf/bench_console.py [--endpoints 5000] [--repeat 15] [--json]
    python perf/bench_console.py --live [--endpoints 5000] [--connected 4000]

In-process (default): a ``Node`` with N agent zones, every endpoint with the states the
console reads (message and byte counters, rate meters, refusals, a remote log position);
the document is built and encoded with orjson as the route does, ``--repeat`` times,
alternating with the baseline: the full ``/v1/status`` document of the same node (built
and encoded the same way), which already serves 5 000-agent nodes. Reported: median and
min/max of each in ms, wall clock and the thread's CPU time (on a machine shared with
other work the CPU time is the cost; the wall clock includes waiting for a core), and
the ratio console/status.

``--live``: a real ``router serve`` (a subprocess, satellite ``sat1``, as ``router perf``
runs it) with N configured agent zones and ``--connected`` of them connected by perf's
emulated TLS agents (perf/load.py); ``GET /v1/console`` and ``GET /v1/status`` over HTTP,
alternating. Reported: the document's own ``build_ms`` (what the node's event loop spends
on it, JSON encoding excluded), the HTTP round trip (build, encode, transfer, decode in the
client), the payload size, and the same for ``/v1/status``.

The issue's target: the console's payload produced in under 200 ms at 5 000 endpoints.
Timings on a shared machine are noisy: read the medians, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.benchpki import make_pki  # noqa: E402
from router.node.stats import BYTES_IN, MSGS_IN  # noqa: E402
from perf.wire import SAT, agent_name  # noqa: E402


def _summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 2),
            "min_ms": round(min(values), 2), "max_ms": round(max(values), 2)}


def in_process(endpoints: int, repeat: int) -> dict[str, Any]:
    from perf.targets import RouterTarget
    from router.config import load_config
    from router.node import Node, report
    from router.node.console import Caches, Sampler, console_document, totals

    base = Path(tempfile.mkdtemp(prefix="bench-console-"))
    bench_pki = make_pki(base / "pki", 0)
    target = RouterTarget(base, bench_pki, endpoints)      # writes the configuration only
    (target.dir / "data").mkdir(exist_ok=True)
    config = load_config(target.config_path)

    async def run() -> dict[str, Any]:
        node = Node(config, asyncio.get_running_loop())
        now = node.loop.time()
        wall = time.time()
        for i in range(endpoints):
            stats = node.endpoint_stats(agent_name(i))
            stats.received["event::CheckResult"] = 1000 + i
            stats.sent["event::SetNextCheck"] = i
            stats.bytes_received, stats.bytes_sent = 900_000 + i, 20_000
            stats.rates.add(MSGS_IN, now, 60)
            stats.rates.add(BYTES_IN, now, 54_000)
            stats.last_message_received = wall - 1
            stats.icinga_version = 21306
            stats.remote_log_position = wall - 30
            if i % 50 == 0:
                stats.refused[("event::CheckResult", "not_allowed")] = 2
        caches, sampler = Caches(), Sampler()
        for k in range(30):
            sampler.add(wall - 60 + 2 * k, totals(node))
        console_ms, status_ms, console_cpu, status_cpu, sizes = [], [], [], [], {}
        for _ in range(repeat):
            started, cpu = time.perf_counter(), time.thread_time()
            body = orjson.dumps(console_document(node, caches=caches, sampler=sampler))
            console_ms.append((time.perf_counter() - started) * 1000)
            console_cpu.append((time.thread_time() - cpu) * 1000)
            sizes["console"] = len(body)
            started, cpu = time.perf_counter(), time.thread_time()
            body = orjson.dumps(report.status_document(node))
            status_ms.append((time.perf_counter() - started) * 1000)
            status_cpu.append((time.thread_time() - cpu) * 1000)
            sizes["status"] = len(body)
        node.stop_housekeeping()
        return {"mode": "in-process", "endpoints": endpoints, "repeat": repeat,
                "console": {**_summary(console_ms), "bytes": sizes["console"]},
                "console_cpu": _summary(console_cpu),
                "status": {**_summary(status_ms), "bytes": sizes["status"]},
                "status_cpu": _summary(status_cpu),
                "ratio_console_over_status": round(statistics.median(console_ms)
                                                   / statistics.median(status_ms), 2),
                "ratio_console_over_status_cpu": round(statistics.median(console_cpu)
                                                       / statistics.median(status_cpu), 2)}

    return asyncio.run(run())


def live(endpoints: int, connected: int, repeat: int) -> dict[str, Any]:
    from perf.load import N_COUNTERS, PerfAgent
    from perf.targets import RouterTarget
    from perf.wire import client_context, message_template

    base = Path(tempfile.mkdtemp(prefix="bench-console-live-"))
    bench_pki = make_pki(base / "pki", endpoints, shared_key=True)
    target = RouterTarget(base, bench_pki, endpoints)
    target.start()
    agents: list[PerfAgent] = []

    async def run() -> dict[str, Any]:
        counter = [0] * N_COUNTERS
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            name = agent_name(i)
            ctx = client_context(bench_pki.ca_cert, bench_pki.cert(name),
                                 bench_pki.out_dir / "agents.key")
            agent = PerfAgent(name, "127.0.0.1", target.port, ctx,
                              message_template(name, 200), 1, counter, 0)
            async with gate:
                try:
                    await agent.connect()
                except (OSError, TimeoutError):
                    # refused by the node's admission limits: dial again as perf's agents do
                    await agent.reconnect(backoff=True)
            agents.append(agent)

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(connected)))
        connect_s = time.monotonic() - started
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            doc = await asyncio.to_thread(target.status, "sections=connections")
            if doc["connections"]["established"] >= connected:
                break
            await asyncio.sleep(0.5)
        stop = asyncio.Event()
        senders = [asyncio.ensure_future(a.run(stop, 0.5, (i % 100) / 50))
                   for i, a in enumerate(agents)]
        await asyncio.sleep(3)

        def fetch(path: str) -> tuple[float, bytes]:
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{target.status_port}{path}",
                                        timeout=30) as resp:
                body = resp.read()
            return (time.perf_counter() - started) * 1000, body

        console_ms, build_ms, build_cpu, status_ms, sizes = [], [], [], [], {}
        parts: list[dict[str, float]] = []
        for _ in range(repeat):
            ms, body = await asyncio.to_thread(fetch, "/v1/console")
            console_ms.append(ms)
            doc = orjson.loads(body)
            build_ms.append(doc["build_ms"])
            build_cpu.append(doc["build_cpu_ms"])
            parts.append(doc["build_parts_ms"])
            sizes["console"] = len(body)
            ms, body = await asyncio.to_thread(fetch, "/v1/status")
            status_ms.append(ms)
            sizes["status"] = len(body)
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        return {"mode": "live", "endpoints": endpoints, "connected": connected,
                "agents_connect_s": round(connect_s, 1), "repeat": repeat,
                "console_build": _summary(build_ms),
                "console_build_cpu": _summary(build_cpu),
                "console_build_parts_median": {
                    key: round(statistics.median(p.get(key, 0.0) for p in parts), 2)
                    for key in parts[0]},
                "console_http": {**_summary(console_ms), "bytes": sizes["console"]},
                "status_http": {**_summary(status_ms), "bytes": sizes["status"]},
                "ratio_console_over_status_http": round(statistics.median(console_ms)
                                                        / statistics.median(status_ms), 2)}

    try:
        return asyncio.run(_with_cleanup(run(), agents))
    finally:
        target.stop()


async def _with_cleanup(main: Any, agents: list[Any]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await main
        return result
    finally:
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=5000)
    ap.add_argument("--connected", type=int, default=4000,
                    help="--live: agents that connect (the rest stay disconnected)")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--live", action="store_true",
                    help="a real router serve with emulated TLS agents, over HTTP")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.live:
        result = live(args.endpoints, min(args.connected, args.endpoints), args.repeat)
    else:
        result = in_process(args.endpoints, args.repeat)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    for key, value in result.items():
        print(f"{key:34} {value}")
    print(f"(sat1 = {SAT}; target: the console document under 200 ms at 5 000 endpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
