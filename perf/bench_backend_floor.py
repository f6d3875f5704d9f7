"""What the result backends alone cost this machine per result: carbon-cache and influxd.

```sh
python -m perf.bench_backend_floor [--hosts 5000] [--rate 10000] [--duration 20]
```

Issue 19's benchmark asks, at 5 000 agents flat out, for routing throughput with all three
writers on of at least 0.85 of the same run without them, with the backends on the same
machine. Whatever runs only because the writers are on (the writers' process, carbon-cache,
influxd, PostgreSQL, the node's feed) may then take at most 15 % of the machine's CPU at 0.85
of the flat-out rate. This measures the part no writer code can remove: the CPU that
carbon-cache and influxd themselves spend on the points one result becomes with the
writers' default options (one Graphite line and one InfluxDB point per perfdata value; the
load's results carry one value each).

It starts both backends as the writer benchmark does (``perf.backends``: carbon with a 1 s
retention schema and no create limit, influxd with its own config, under a temporary
directory), creates every metric first (one line and one point per host, then a pause), then
sends ``--rate`` results/s for ``--duration`` seconds in 0.1 s batches, the Graphite lines on
one TCP connection (as the writer does) and the InfluxDB points as HTTP writes of one batch
each, and reads both processes' CPU time (user + system, every thread) from the start of
sending until neither spends more than 2 % of a core for two seconds after the last batch
(their queues drained). Printed: CPU per result (µs) for each backend and their sum, the
cores they need at ``--rate``, and the share of the machine that leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from perf.backends import CarbonServer, InfluxServer

DB = "icinga2"


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _graphite(host: int, value: float, ts: int) -> bytes:
    return (f"icinga2.agent-{host:05d}.services.load.check_load.perfdata.time.value "
            f"{value:.6f} {ts}\n").encode()


def _influx(host: int, value: float, ns: int) -> bytes:
    return (f"check_load,hostname=agent-{host:05d},metric=time,service=load "
            f"value={value:.6f} {ns}\n").encode()


class Sender:
    """One carbon connection and InfluxDB HTTP writes, as the writers send them."""

    def __init__(self, carbon: CarbonServer, influx: InfluxServer) -> None:
        self.carbon = socket.create_connection(("127.0.0.1", carbon.port), timeout=30)
        self.write_url = f"{influx.url}/write?db={DB}&precision=ns"

    def send(self, hosts: range, start: int, count: int, hosts_n: int) -> None:
        now = time.time()
        ts, ns = int(now), time.time_ns()
        lines = bytearray()
        points = bytearray()
        for i in range(start, start + count):
            host = hosts[i % hosts_n]
            value = (i % 1000) / 1000
            lines += _graphite(host, value, ts)
            points += _influx(host, value, ns + i)      # one point per result
        self.carbon.sendall(lines)
        req = urllib.request.Request(self.write_url, data=bytes(points), method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            if resp.status != 204:
                raise RuntimeError(f"influxd answered HTTP {resp.status}")

    def close(self) -> None:
        self.carbon.close()


def _settle(procs: dict[str, psutil.Process], limit: float) -> None:
    """Until every backend spends under 2 % of a core for two seconds, at most ``limit`` s."""
    deadline = time.monotonic() + limit
    quiet = 0
    last = {k: _cpu(p) for k, p in procs.items()}
    while time.monotonic() < deadline and quiet < 2:
        time.sleep(1.0)
        now = {k: _cpu(p) for k, p in procs.items()}
        quiet = quiet + 1 if all(now[k] - last[k] < 0.02 for k in procs) else 0
        last = now


def run(hosts_n: int, rate: float, duration: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="backend-floor-"))
    carbon = CarbonServer(base / "carbon")
    influx = InfluxServer(base / "influx")
    carbon.start()
    influx.start()
    try:
        assert carbon.proc is not None and influx.proc is not None
        procs = {"carbon": psutil.Process(carbon.proc.pid),
                 "influxd": psutil.Process(influx.proc.pid)}
        urllib.request.urlopen(urllib.request.Request(
            f"{influx.url}/query", data=f"q=CREATE DATABASE {DB}".encode(),
            method="POST"), timeout=30).close()
        hosts = range(hosts_n)
        sender = Sender(carbon, influx)
        for start in range(0, hosts_n, 1000):                  # every metric exists first
            sender.send(hosts, start, min(1000, hosts_n - start), hosts_n)
        _settle(procs, 120)
        before = {k: _cpu(p) for k, p in procs.items()}
        batch = max(1, int(rate / 10))
        sent = 0
        t0 = time.monotonic()
        while sent < rate * duration:
            sender.send(hosts, sent, batch, hosts_n)
            sent += batch
            delay = t0 + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send_s = time.monotonic() - t0
        _settle(procs, 120)
        sender.close()
        used = {k: _cpu(p) - before[k] for k, p in procs.items()}
        points = influx_count(influx)
    finally:
        carbon.stop()
        influx.stop()
    per = {k: 1e6 * v / sent for k, v in used.items()}
    total = sum(per.values())
    return {"hosts": hosts_n, "rate": rate, "duration_s": duration, "sent": sent,
            "send_s": round(send_s, 2), "cpu_s": {k: round(v, 3) for k, v in used.items()},
            "us_per_result": {k: round(v, 2) for k, v in per.items()},
            "us_per_result_both": round(total, 2),
            "cores_at_rate": round(total * rate / 1e6, 3),
            "influx_points": points, "cpus": os.cpu_count()}


def influx_count(influx: InfluxServer) -> int | str:
    try:
        return influx.count(DB)
    except Exception as e:  # noqa: BLE001 - reported, not fatal to the CPU figures
        return f"query failed: {e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=5000)
    p.add_argument("--rate", type=float, default=10000.0, help="results a second")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--json", dest="json_path")
    a = p.parse_args()
    res = run(a.hosts, a.rate, a.duration)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(res, indent=2) + "\n")
    us = res["us_per_result"]
    print(f"{res['sent']} results in {res['send_s']} s to {res['hosts']} metrics each: "
          f"carbon {us['carbon']:.1f} us/result, influxd {us['influxd']:.1f} us/result, "
          f"both {res['us_per_result_both']:.1f} us; at {a.rate:g}/s they need "
          f"{res['cores_at_rate']:.2f} of {res['cpus']} cores "
          f"({100 * res['cores_at_rate'] / (res['cpus'] or 1):.0f} % of the machine); "
          f"points in InfluxDB: {res['influx_points']}")


if __name__ == "__main__":
    main()
