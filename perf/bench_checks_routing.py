"""Routing latency of unrelated traffic while slow plugins run on the node's executors.

The claim to check: plugins run in executor processes, so a storm of slow checks never
stalls routing. One run, two phases, same process and same load:

1. baseline: a scripted agent sends event::CheckResult through our satellite (TLS on
   127.0.0.1) to a scripted parent at a fixed rate; the parent measures the latency of
   each (send time embedded in the output);
2. the same, while the parent keeps N checks (default 500) of a plugin that sleeps
   (``sleep 5``) in flight on the satellite's executors via event::ExecuteCommand.

Prints p50/p99/max latency per phase and the ratio. Usage:
``python perf/bench_checks_routing.py [--slow 500] [--rate 1000] [--seconds 5] [--json F]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkers.catalog import Catalog  # noqa: E402
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until  # noqa: E402
from tests.pkiutil import make_test_pki  # noqa: E402

SLEEP_CATALOG = """
[commands.sleepy]
command = ["/bin/sleep", "$sleep_seconds$"]
timeout = 60
"""


async def phase(agent: FakePeer, parent: FakePeer, rate: int, seconds: float, tag: str
                ) -> list[float]:
    """Send ``rate`` results per second for ``seconds``; return their latencies (s)."""
    sent = 0
    start = time.perf_counter()
    total = int(rate * seconds)
    while sent < total:
        due = start + sent / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        agent.send("event::CheckResult",
                   check_result("agent1", f"s{sent % 20}", f"{tag} {time.time():.6f}"))
        sent += 1

    def arrived() -> int:
        return sum(1 for m in parent.messages("event::CheckResult")
                   if m["params"]["cr"]["output"].startswith(tag))
    await wait_until(lambda: arrived() >= total, timeout=30, what=f"{tag} results")
    latencies = []
    for message in parent.messages("event::CheckResult"):
        output = message["params"]["cr"]["output"]
        if output.startswith(tag + " "):
            latencies.append(message["_received"] - float(output.split()[1]))
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"count": len(ordered), "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": 1000 * ordered[-1]}


async def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-checks-routing-"))
    pki = make_test_pki(tmp / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp, pki, [("master", ["master"], None), ("sat", ["sat1"], "master"),
                                  ("agent1", ["agent1"], "sat")])
    sat = await spec.start("sat1", node_extra="accept_commands = true")
    sat.node.executor.catalog = _with_sleepy()
    parent = await FakePeer.connect(spec.port("sat1"), pki, "master", server_name="sat1")
    _stamp_arrivals(parent)
    agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1", server_name="sat1")
    await wait_until(lambda: {"master", "agent1"} <= set(sat.node.connections),
                     what="sessions")
    try:
        baseline = await phase(agent, parent, args.rate, args.seconds, "base")
        for i in range(args.slow):
            parent.send("event::ExecuteCommand", {
                "command": "sleepy", "command_type": "check_command", "host": "sat1",
                "service": f"slow{i}", "macros": {"sleep_seconds": args.sleep}})
        pool = sat.node.executor.pool
        await wait_until(lambda: pool.stats()["running"] + pool.stats()["queued"]
                         >= args.slow * 0.9, timeout=30, what="slow checks in flight")
        in_flight = pool.stats()["running"]
        loaded = await phase(agent, parent, args.rate, args.seconds, "load")
        still = pool.stats()["running"]
    finally:
        await agent.close()
        await parent.close()
        await sat.stop(drain_timeout=1)
    result = {"rate": args.rate, "seconds": args.seconds, "slow_checks": args.slow,
              "running_at_start": in_flight, "running_at_end": still,
              "baseline": summary(baseline), "with_slow_checks": summary(loaded)}
    result["p99_ratio"] = result["with_slow_checks"]["p99_ms"] / result["baseline"]["p99_ms"]
    return result


def _with_sleepy() -> Catalog:
    """The bundled catalog plus a command that only sleeps (a slow plugin)."""
    from checkers.catalog import BUNDLED_CATALOG

    return Catalog.loads(BUNDLED_CATALOG.read_text() + SLEEP_CATALOG)


def _stamp_arrivals(peer: FakePeer) -> None:
    """Record the arrival time of every message (the read loop appends to ``received``)."""
    class Stamped(list):
        def append(self, item):  # noqa: D401 - list hook
            if isinstance(item, dict):
                item["_received"] = time.time()
            super().append(item)
    peer.received = Stamped(peer.received)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--sleep", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(main(args))
    print(f"# {args.rate} results/s through one satellite for {args.seconds:g} s per phase; "
          f"{args.slow} checks sleeping {args.sleep:g} s on its executors in phase 2")
    print("phase\tcount\tp50_ms\tp99_ms\tmax_ms")
    for name in ("baseline", "with_slow_checks"):
        row = result[name]
        print(f"{name}\t{row['count']}\t{row['p50_ms']:.2f}\t{row['p99_ms']:.2f}\t"
              f"{row['max_ms']:.2f}")
    print(f"p99 ratio (with/baseline)\t{result['p99_ratio']:.2f}")
    print(f"slow checks running at start/end of phase 2\t{result['running_at_start']}/"
          f"{result['running_at_end']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    run()
