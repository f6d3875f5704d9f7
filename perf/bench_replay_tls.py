"""Replay of a large backlog to a returning parent over TLS, beside live HA traffic.

Topology: zone ``master`` (the parent, away), zone ``sat`` = our router ``sat1`` plus a
scripted HA peer ``sat2``, zone ``agent1`` (a scripted agent). The router's replay log for
zone ``master`` is prefilled with N check results (default 1 000 000), then
``router serve`` starts as its own process. While a scripted parent connects and receives
the backlog, the agent sends live results at a fixed rate; the router relays them to its
HA peer ``sat2`` at once (and to the parent's log behind the backlog). Reported: replay
throughput at the parent, and the latency of the live traffic at ``sat2`` during the replay
next to a baseline taken before the parent connects, in the same run.

Usage: ``python perf/bench_replay_tls.py [--records 1000000] [--rate 500] [--json F]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaylog import ReplayStore  # noqa: E402
from router.protocol import jsonrpc, netstring  # noqa: E402
from tests.nodeutil import ClusterSpec, check_result, free_port  # noqa: E402
from tests.pkiutil import make_test_pki  # noqa: E402


def prefill(path: Path, records: int) -> float:
    """Write ``records`` CheckResult frames for zone master; return seconds taken."""
    started = time.perf_counter()
    store = ReplayStore(path, max_bytes=4 << 30)
    base = time.time() - 3600
    batch = []
    for i in range(records):
        ts = base + i * 1e-3
        params = check_result("agent1", f"svc{i % 100}", f"backlog {i}", now=ts)
        batch.append(("master", ts, netstring.encode(jsonrpc.notification(
            "event::CheckResult", params, ts=ts)), "agent1"))
        if len(batch) == 10_000:
            store.append_many(batch)
            batch.clear()
    if batch:
        store.append_many(batch)
    store.close()
    return time.perf_counter() - started


class Peer:
    """A TLS peer that counts frames (and keeps the payloads of live results)."""

    def __init__(self, reader, writer, *, keep_tag: bytes | None = None) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = netstring.NetstringDecoder(-1)
        self.count = 0
        self.last = 0.0
        self.keep_tag = keep_tag
        self.kept: list[tuple[float, bytes]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(1 << 18)
            if not data:
                return
            now = time.time()
            for payload in self.decoder.feed(data):
                if b"event::CheckResult" not in payload:
                    continue
                self.count += 1
                self.last = now
                if self.keep_tag is not None and self.keep_tag in payload:
                    self.kept.append((now, payload))

    def send(self, method: str, params: dict, **top) -> None:
        message = {"jsonrpc": "2.0", "method": method, "params": params, **top}
        self.writer.write(netstring.encode(orjson.dumps(message)))


async def connect(port: int, pki, name: str, **kw) -> Peer:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.cert(name)), str(pki.key(name)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="sat1", limit=1 << 20)
    peer = Peer(reader, writer, **kw)
    peer.send("icinga::Hello", {"capabilities": 1, "version": 21306})
    return peer


async def live(agent: Peer, sat2: Peer, rate: int, seconds: float, tag: str) -> list[float]:
    """Send live results for ``seconds``; return their latencies at sat2 (s)."""
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        agent.send("event::CheckResult",
                   check_result("agent1", "live", f"{tag} {time.time():.6f}"))
    deadline = time.time() + 30
    while sum(1 for _, p in sat2.kept if f'"{tag} '.encode() in p) < total \
            and time.time() < deadline:
        await asyncio.sleep(0.05)
    latencies = []
    for arrived, payload in sat2.kept:
        output = orjson.loads(payload)["params"]["cr"]["output"]
        if output.startswith(tag + " "):
            latencies.append(arrived - float(output.split()[1]))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-tls-"))
    pki = make_test_pki(tmp / "pki", ["master", "sat1", "sat2", "agent1"])
    spec = ClusterSpec(tmp, pki, [("master", ["master"], None),
                                  ("sat", ["sat1", "sat2"], "master"),
                                  ("agent1", ["agent1"], "sat")])
    status_port = free_port()
    text = spec.toml("sat1").replace('log_level = "debug"', 'log_level = "warning"').replace(
        'status_listen = "127.0.0.1:0"', f'status_listen = "127.0.0.1:{status_port}"')
    (tmp / "sat1").mkdir(parents=True, exist_ok=True)
    config = tmp / "sat1.toml"
    config.write_text(text)
    fill_seconds = prefill(tmp / "sat1" / "replaylog", args.records)
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = spec.port("sat1")
        for _ in range(200):
            try:
                sat2 = await connect(port, pki, "sat2", keep_tag=b"live")
                break
            except OSError:
                await asyncio.sleep(0.05)
        agent = await connect(port, pki, "agent1")
        await asyncio.sleep(0.5)
        baseline = await live(agent, sat2, args.rate, args.baseline, "base")
        started = time.time()
        parent = await connect(port, pki, "master")
        during_task = asyncio.ensure_future(live(agent, sat2, args.rate, args.live, "live"))
        while parent.count < args.records and time.time() - started < args.timeout:
            await asyncio.sleep(0.05)
        replay_seconds = parent.last - started
        during = await during_task
        received = parent.count
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    disk = sum(f.stat().st_size for f in (tmp / "sat1" / "replaylog").iterdir())
    return {
        "records": args.records, "prefill_seconds": fill_seconds,
        "replayed": received, "replay_seconds": replay_seconds,
        "replay_msgs_per_s": received / replay_seconds if replay_seconds > 0 else 0.0,
        "disk_bytes_per_record": disk / args.records,
        "live_rate": args.rate,
        "baseline_ms": {"count": len(baseline), "p50": pct(baseline, 0.5),
                        "p99": pct(baseline, 0.99)},
        "during_replay_ms": {"count": len(during), "p50": pct(during, 0.5),
                             "p99": pct(during, 0.99)},
    }


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=500, help="live results per second")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of baseline")
    parser.add_argument("--live", type=float, default=5.0,
                        help="seconds of live traffic during the replay")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import uvloop

    r = uvloop.run(main(args))
    print(f"# backlog of {r['records']} CheckResults (golden-message shape, ~0.7 KiB) in the replay log of zone master;"
          f" live traffic {r['live_rate']}/s from an agent to the HA peer during the replay")
    print(f"prefill\t{r['prefill_seconds']:.1f} s (direct LMDB appends, not timed below)")
    print(f"replayed to the parent over TLS\t{r['replayed']} in {r['replay_seconds']:.1f} s"
          f"\t{r['replay_msgs_per_s']:.0f} msg/s")
    print(f"disk per record\t{r['disk_bytes_per_record']:.0f} B")
    b, d = r["baseline_ms"], r["during_replay_ms"]
    print("live latency at the HA peer\tcount\tp50_ms\tp99_ms")
    print(f"  before the parent returns\t{b['count']}\t{b['p50']:.2f}\t{b['p99']:.2f}")
    print(f"  while the backlog replays\t{d['count']}\t{d['p50']:.2f}\t{d['p99']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    run()
