#!/usr/bin/env python3
"""Checks per second through the check pool (real executor processes, trivial plugins).

Every scenario submits ``--checks`` checks to a fresh ``CheckerPool``, all at once by
default (the pool admits ``--concurrency``, its ``max_concurrent``, and queues the rest,
so the latency columns are mostly queue wait), or ``--window`` at a time (then the
latency is the service time at that load). One TSV row per scenario:

  pool_true         /bin/true through the pool (spawn + pipe + reap + two frames)
  pool_sh_perfdata  /bin/sh -c 'echo "OK|a=1;2;3"' (a shell start and output parsing)
  pool_dummy        the internal dummy command (in-process, no executor round trip)
  direct_true       /bin/true with checkers.runner.run_plugin in this process (no pool)

Columns: checks/s, latency of ``pool.run`` (p50/p99, ms, includes queue wait), CPU
seconds per check in the router process and in the executors (from /proc).

Usage: python perf/bench_checkers.py [--workers 2] [--checks 20000] [--concurrency 512]
       [--window N] [--loop uvloop|asyncio] [--only NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkers.messages import CheckRequest  # noqa: E402
from checkers.pool import CheckerPool  # noqa: E402
from checkers.runner import run_plugin  # noqa: E402

TRUE = shutil.which("true") or "/bin/true"
SCENARIOS = {
    "pool_true": CheckRequest(argv=(TRUE,), timeout=30),
    "pool_sh_perfdata": CheckRequest(argv=("/bin/sh", "-c", 'echo "OK - fine|a=1;2;3"'),
                                     timeout=30),
    "pool_dummy": CheckRequest(internal="dummy", macros={"dummy_state": 0,
                                                         "dummy_text": "OK|a=1"}),
    "direct_true": CheckRequest(argv=(TRUE,), timeout=30),
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` and its reaped children (the plugins), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return 0.0
    # fields[11..14] = utime, stime, cutime, cstime (after the state field at [0])
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def _timed(coro_factory, count: int, limit: int) -> tuple[float, list[float], list]:
    semaphore = asyncio.Semaphore(limit)
    latencies: list[float] = []
    outcomes: list = []

    async def one() -> None:
        async with semaphore:
            started = time.perf_counter()
            outcome = await coro_factory()
            latencies.append(time.perf_counter() - started)
            outcomes.append(outcome)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - started, latencies, outcomes


async def run_scenario(name: str, args: argparse.Namespace) -> dict:
    request = SCENARIOS[name]
    sockdir = tempfile.mkdtemp(prefix="bck-", dir="/tmp")
    cpu_before = _self_cpu()
    executor_cpu = 0.0
    try:
        if name.startswith("direct"):
            def factory():
                return run_plugin(request.argv, timeout=request.timeout)
            # the executor's own concurrency, not the pool's (one process does it all)
            elapsed, latencies, outcomes = await _timed(factory, args.checks,
                                                        args.concurrency // args.workers)
        else:
            pool = CheckerPool(sockdir, workers=args.workers, max_concurrent=args.concurrency,
                               max_queue=max(args.checks, 25000))
            await pool.start()
            pids = [e["pid"] for e in pool.stats()["executors"]]
            before = sum(_cpu_of(pid) for pid in pids)
            cpu_before = _self_cpu()
            try:
                # --window checks outstanding (default: all at once, so the pool's own
                # admission and queue do the limiting)
                elapsed, latencies, outcomes = await _timed(lambda: pool.run(request),
                                                            args.checks,
                                                            args.window or args.checks)
                executor_cpu = sum(_cpu_of(pid) for pid in pids) - before
            finally:
                await pool.close()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    router_cpu = _self_cpu() - cpu_before
    bad = sum(1 for outcome in outcomes if outcome.state != 0)
    return {
        "scenario": name,
        "workers": args.workers if not name.startswith("direct") else 0,
        "checks": args.checks,
        "failed": bad,
        "seconds": round(elapsed, 3),
        "checks_per_s": round(args.checks / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "router_cpu_us_per_check": round(router_cpu / args.checks * 1e6, 1),
        "executor_cpu_us_per_check": round(executor_cpu / args.checks * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--checks", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=512, help="pool max_concurrent")
    ap.add_argument("--window", type=int, default=0,
                    help="checks outstanding at once (default 0: all, they queue)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="scenarios to run")
    ap.add_argument("--json", action="store_true", help="print JSON instead of TSV")
    args = ap.parse_args(argv)

    loop_factory = None
    if args.loop == "uvloop":
        import uvloop
        loop_factory = uvloop.new_event_loop
    rows = []
    for name in args.only or list(SCENARIOS):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            rows.append(runner.run(run_scenario(name, args)))

    if args.json:
        print(json.dumps({"loop": args.loop, "python": platform.python_version(),
                          "cpus": os.cpu_count(), "concurrency": args.concurrency,
                          "results": rows}, indent=2))
        return 0
    columns = list(rows[0])
    print("\t".join(columns))
    for row in rows:
        print("\t".join(str(row[column]) for column in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
