"""Result writers on vs off: what feeding Graphite and InfluxDB costs the routing.

``python -m perf.bench_writers --endpoints 5000 --duration 10 --repeat 2``

Each run is ``router perf --topology chain --scenario max`` (agents -> our satellite -> our
master -> an emulated HA peer of the master, flat out): the master is a top-level node, so
it consumes every check result, and with writers on it feeds them to the writers' queues
while it relays them. Runs alternate off / on (then on / off, ...) so machine noise hits
both; medians are compared:

* routing throughput ratio: results/s delivered through the master with writers on over
  the same without (issue 19 target: >= 0.85);
* writer lag: ``router_writer_lag_seconds`` (age of the oldest result not yet written)
  sampled twice a second on the master during the load, p99 and max;
* RSS: the master's and its writers' process at the start and end of the load;
* what reached the backends: InfluxDB points after the run vs results the master consumed,
  and the backlog left when the node stopped (kept in the queue, not lost).

``--feed-only`` measures the node-side cost alone (``ResultFeed``: submit and the LMDB
appends, CPU per result for 1-3 writers); ``--icinga-only`` runs the same flat-out load
on a real Icinga 2.13 (``router perf --against icinga2``) with its GraphiteWriter and
InfluxdbWriter and counts what reached InfluxDB.

The backends are real: carbon-cache and influxd started under a temporary directory
(``perf.backends``). ``--postgresql-dsn`` adds the PostgreSQL writer against a server you
started (its module is router/features/writers/postgresql.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil

from perf.backends import CarbonServer, InfluxServer

__all__ = ["main", "writers_toml"]


def writers_toml(carbon: CarbonServer, influx: InfluxServer, dsn: str | None) -> str:
    out = f"""[[writers]]
name = "graphite"
type = "graphite"
port = {carbon.port}

[[writers]]
name = "influxdb"
type = "influxdb"
url = "{influx.url}"
"""
    if dsn:
        out += f"""
[[writers]]
name = "postgresql"
type = "postgresql"
dsn = "{dsn}"
"""
    return out


class MasterWatch:
    """Polls the master's status while perf runs (its port is known once it started)."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.pid: int | None = None
        self.samples: list[dict[str, Any]] = []
        self.backends: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the master, its writers' process, carbon, influxd and (with
        ``--postgresql-dsn`` to a server on this machine) PostgreSQL with its backends."""
        out: dict[str, float] = {}
        if self.pid is None:
            return out
        try:
            proc = psutil.Process(self.pid)
            t = proc.cpu_times()
            out["master"] = t.user + t.system
            for child in proc.children(recursive=True):
                t = child.cpu_times()
                out["writers_process"] = out.get("writers_process", 0.0) + t.user + t.system
        except psutil.Error:
            pass
        for name, pid in self.backends.items():
            try:
                # with its children: PostgreSQL's work is in a backend per connection
                # (and its checkpointer and WAL writer), not in the postmaster
                proc = psutil.Process(pid)
                out[name] = sum(sum(p.cpu_times()[:2])
                                for p in [proc, *proc.children(recursive=True)])
            except psutil.Error:
                pass
        return out

    def _rss(self) -> tuple[float, float]:
        if self.pid is None:
            return 0.0, 0.0
        try:
            proc = psutil.Process(self.pid)
            children = proc.children(recursive=True)
            return (proc.memory_info().rss / 2**20,
                    sum(c.memory_info().rss for c in children) / 2**20)
        except psutil.Error:
            return 0.0, 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self.port is None:
                continue
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.port}/v1/status?sections=writers,totals",
                        timeout=2) as resp:
                    doc = orjson.loads(resp.read())
            except OSError:
                continue
            rss, child_rss = self._rss()
            self.samples.append({"t": time.monotonic(), "writers": doc.get("writers") or {},
                                 "cpu": self.cpu(),
                                 "check_results": doc["totals"]["check_results"],
                                 "rss_mb": rss, "writers_rss_mb": child_rss})


def _patch_chain(watch: MasterWatch) -> None:
    from perf import chain

    original = chain.ChainTarget.start

    def start(self: Any) -> None:
        original(self)
        watch.port = self.master.status_port
        watch.pid = self.master.root_pid()
    chain.ChainTarget.start = start  # type: ignore[method-assign]


def postgresql_server_pid(dsn: str) -> int | None:
    """The PostgreSQL server (postmaster) behind ``dsn`` when it runs on this machine: the
    process listening on the DSN's port. None when it is elsewhere or cannot be told."""
    from urllib.parse import urlsplit
    try:
        port = urlsplit(dsn).port if "://" in dsn else next(
            (int(kv.split("=", 1)[1]) for kv in dsn.split() if kv.startswith("port=")), None)
    except ValueError:
        return None
    port = port or 5432
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                pid: int | None = conn.pid
                return pid
    except psutil.Error:
        return None
    return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def one_run(args: argparse.Namespace, writers: bool, base: Path) -> dict[str, Any]:
    from perf.tool import Options, run

    watch = MasterWatch()
    _patch_chain(watch)
    carbon = influx = None
    toml = ""
    if writers:
        carbon = CarbonServer(base / "carbon")
        influx = InfluxServer(base / "influx")
        carbon.start()
        influx.start()
        toml = writers_toml(carbon, influx, args.postgresql_dsn)
        assert carbon.proc is not None and influx.proc is not None
        watch.backends = {"carbon": carbon.proc.pid, "influxd": influx.proc.pid}
        pg = postgresql_server_pid(args.postgresql_dsn) if args.postgresql_dsn else None
        if pg is not None:
            watch.backends["postgresql"] = pg
    watch.start()
    try:
        result = run(Options(endpoints=args.endpoints, rate=None, duration=args.duration,
                             warmup=args.warmup, scenarios=("max",), topology="chain",
                             router_toml=toml, progress=False),
                     echo=lambda s: print("   ", s, file=sys.stderr, flush=True))
    finally:
        watch.stop()
    session = result["sessions"][0]
    mx = session.get("max", {})
    out: dict[str, Any] = {"writers": writers, "delivered_per_s": mx.get("delivered_per_s"),
                           "delivered_total": mx.get("delivered_total")}
    samples = [s for s in watch.samples if s["rss_mb"]]
    if samples:
        first, last = samples[0]["cpu"], samples[-1]["cpu"]
        seconds = samples[-1]["t"] - samples[0]["t"]
        out["cpu_cores"] = {k: round((last[k] - first.get(k, 0.0)) / seconds, 3)
                            for k in last if seconds > 0}
        results = samples[-1]["check_results"] - samples[0]["check_results"]
        if results > 0 and "master" in last:
            # The master's own CPU per routed result: robust against a busy machine,
            # where the throughput says more about the other jobs than about us.
            out["master_cpu_us_per_result"] = round(
                (last["master"] - first.get("master", 0.0)) / results * 1e6, 2)
    with_writers = [s for s in samples if any(w.get("written") for w in s["writers"].values())]
    if with_writers:
        samples_for_writers = with_writers
    else:
        samples_for_writers = samples
    if samples:
        out["rss_mb_first"] = samples[0]["rss_mb"]
        out["rss_mb_last"] = samples[-1]["rss_mb"]
        out["writers_rss_mb_last"] = samples[-1]["writers_rss_mb"]
        out["consumed"] = samples[-1]["check_results"]
    if writers and samples_for_writers:
        per_writer: dict[str, Any] = {}
        for name in samples_for_writers[-1]["writers"]:
            lags = [float(s["writers"].get(name, {}).get("lag_seconds", 0.0)) for s in samples]
            last = samples_for_writers[-1]["writers"][name]
            per_writer[name] = {"lag_p99_s": _pct(lags, 0.99), "lag_max_s": max(lags),
                                "written": last.get("written"),
                                "backlog_at_end": last.get("backlog"),
                                "evicted": last.get("evicted"),
                                "errors": last.get("errors")}
        out["per_writer"] = per_writer
        assert influx is not None
        try:
            out["influx_points"] = influx.count("icinga2")
        except (OSError, RuntimeError) as e:
            out["influx_points"] = f"query failed: {e}"
    if carbon is not None:
        carbon.stop()
    if influx is not None:
        influx.stop()
    return out


def icinga_writers_config(carbon: CarbonServer, influx: InfluxServer) -> str:
    """Icinga's GraphiteWriter and InfluxdbWriter with their defaults, on our backends."""
    host, port = influx.url.rsplit(":", 1)
    return f"""object GraphiteWriter "graphite" {{
  host = "127.0.0.1"
  port = {carbon.port}
}}
object InfluxdbWriter "influxdb" {{
  host = "127.0.0.1"
  port = {port}
  database = "icinga2"
  host_template = {{ measurement = "$host.check_command$", tags = {{ hostname = "$host.name$" }} }}
  service_template = {{ measurement = "$service.check_command$", tags = {{ hostname = "$host.name$", service = "$service.name$" }} }}
}}
"""


def icinga_run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The same flat-out load on a real Icinga 2.13 satellite (``router perf --against
    icinga2``) with its GraphiteWriter and InfluxdbWriter: results it received vs points
    that reached InfluxDB. Icinga's InfluxdbWriter stamps points in whole seconds, so the
    results of one service within a second become one point."""
    import urllib.parse

    from perf import targets
    from perf.tool import Options, run

    carbon = CarbonServer(base / "carbon")
    influx = InfluxServer(base / "influx")
    carbon.start()
    influx.start()
    urllib.request.urlopen(urllib.request.Request(
        f"{influx.url}/query", data=urllib.parse.urlencode(
            {"q": "CREATE DATABASE icinga2"}).encode()), timeout=10).read()
    extra = icinga_writers_config(carbon, influx)
    original = targets.IcingaTarget.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        self.node.extra_config = extra
        self.node.write_config()
    targets.IcingaTarget.__init__ = init  # type: ignore[method-assign]
    try:
        result = run(Options(endpoints=args.endpoints, rate=None, duration=args.duration,
                             warmup=args.warmup, scenarios=("max",), against="icinga2",
                             only_against=True, progress=False),
                     echo=lambda s: print("   ", s, file=sys.stderr, flush=True))
    finally:
        targets.IcingaTarget.__init__ = original  # type: ignore[method-assign]
    time.sleep(12)                      # Icinga's InfluxdbWriter flushes every 10 s
    session = result["sessions"][0]
    mx = session.get("max", {})
    out: dict[str, Any] = {"icinga": session.get("version"),
                           "delivered_per_s": mx.get("delivered_per_s"),
                           "delivered_total": mx.get("delivered_total"),
                           "sent": mx.get("sent")}
    try:
        out["influx_points"] = influx.count("icinga2")
    except (OSError, RuntimeError) as e:
        out["influx_points"] = f"query failed: {e}"
    out["graphite_metrics"] = len(carbon.metrics())
    carbon.stop()
    influx.stop()
    return out


def feed_cost(writers: int, count: int = 50_000) -> dict[str, float]:
    """The node-side cost alone: ``ResultFeed.submit`` plus its commit thread, process CPU
    per result (1 KiB perf results), and the anonymous memory left after 4 rounds."""
    from perf.wire import message_template
    from router.config import WriterSpec
    from router.features.writers.feed import ResultFeed

    template = message_template("agent-00001", 1024)
    raws = [template % ((b"1700000000.%06d" % i,) * 5) for i in range(count)]

    def anon_kb() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        feed = ResultFeed(tmp, [WriterSpec(f"w{i}", "graphite") for i in range(writers)])
        before = anon_kb()
        c0 = time.process_time()
        for _ in range(4):
            for raw in raws:
                feed.submit(raw)
            feed.flush(120)
        cpu = time.process_time() - c0
        grown = anon_kb() - before
        feed.close()
    return {"writers": writers, "cpu_us_per_result": round(cpu / (4 * count) * 1e6, 2),
            "anon_mb_grown": round(grown / 1024, 1), "dropped": feed.dropped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2, help="pairs of runs (off/on)")
    ap.add_argument("--postgresql-dsn", default=None)
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--feed-only", action="store_true",
                    help="only the node-side cost (ResultFeed) for 1, 2 and 3 writers")
    ap.add_argument("--icinga-only", action="store_true",
                    help="only the run against a real Icinga 2 with its writers")
    args = ap.parse_args(argv)
    if args.icinga_only:
        with tempfile.TemporaryDirectory(prefix="bench-writers-icinga-") as tmp:
            print(json.dumps(icinga_run(args, Path(tmp)), indent=2, default=str))
        return 0
    if args.feed_only:
        print(json.dumps([feed_cost(n) for n in (1, 2, 3)], indent=2))
        return 0
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        order = (False, True) if i % 2 == 0 else (True, False)
        for writers in order:
            with tempfile.TemporaryDirectory(prefix="bench-writers-") as tmp:
                print(f"run {len(runs) + 1}: writers {'on' if writers else 'off'}",
                      file=sys.stderr, flush=True)
                runs.append(one_run(args, writers, Path(tmp)))
                print(json.dumps(runs[-1], default=str), file=sys.stderr, flush=True)
    off = [r["delivered_per_s"] for r in runs if not r["writers"] and r["delivered_per_s"]]
    on = [r["delivered_per_s"] for r in runs if r["writers"] and r["delivered_per_s"]]
    summary: dict[str, Any] = {
        "endpoints": args.endpoints, "duration": args.duration,
        "delivered_per_s_off": off, "delivered_per_s_on": on,
        "median_off": statistics.median(off) if off else None,
        "median_on": statistics.median(on) if on else None,
    }
    if off and on:
        summary["throughput_ratio_on_off"] = statistics.median(on) / statistics.median(off)
    cpu_off = [r["master_cpu_us_per_result"] for r in runs
               if not r["writers"] and r.get("master_cpu_us_per_result")]
    cpu_on = [r["master_cpu_us_per_result"] for r in runs
              if r["writers"] and r.get("master_cpu_us_per_result")]
    if cpu_off and cpu_on:
        summary["master_cpu_us_per_result_off"] = cpu_off
        summary["master_cpu_us_per_result_on"] = cpu_on
        summary["master_cpu_ratio_on_off"] = statistics.median(cpu_on) / statistics.median(cpu_off)
    summary["load_average"] = psutil.getloadavg()
    lags = [w["lag_p99_s"] for r in runs if r["writers"] for w in r.get("per_writer", {}).values()]
    summary["writer_lag_p99_s_worst"] = max(lags) if lags else None
    print(json.dumps({"summary": summary, "runs": runs}, indent=2, default=str))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"summary": summary, "runs": runs},
                                                   indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
