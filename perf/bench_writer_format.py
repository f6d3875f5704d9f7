"""CPU per check result in the writers' process, per writer and for all three together.

``python -m perf.bench_writer_format --results 20000 --repeat 5``

Why: issue 19's end-to-end benchmark (``perf/bench_writers.py``) needs the whole chain and
a loaded machine, and its ratio moves with everything else on the CPUs. This one isolates
what ``python -m router.features.writers.child`` spends per result, single core, in a few
seconds, so a change to the writers' path can be judged on its own.

What runs is the real path, minus the network: a real shared LMDB queue
(``router.features.writers.queue.SharedQueue``) is filled with ``--results`` check-result
messages exactly as the node's feed stores them (the received ``event::CheckResult`` JSON,
``encode_record``), with Icinga-like perfdata (3-5 values with units and thresholds) and
service names with spaces, over ``--hosts`` hosts x 4 services. Then real ``WriterRunner``
instances with the real backend classes drain it on one uvloop loop, as in the writers'
process: queue stats, reads (in the runner's I/O threads), decoding, formatting, position
confirms (LMDB write transactions). Only the backend's network write is left out:
``GraphiteBackend``/``InfluxdbBackend`` format the batch's bytes (``lines``), the
PostgreSQL backend builds its rows and the ``unnest`` arguments of the upsert and the
history insert (``postgresql.state_changes``, as if the table were empty) without a
database.

Reported: process CPU (user+sys, all threads) per result, median of ``--repeat`` runs,
for each writer alone and for graphite+influxdb+postgresql together, plus the spread
(min-max). ``--profile WRITER`` prints a cProfile of one run instead.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from router.config import WriterSpec
from router.features.writers.base import Batch, HAView
from router.features.writers.graphite import GraphiteBackend
from router.features.writers.influxdb import InfluxdbBackend
from router.features.writers.postgresql import PostgresqlBackend, state_changes
from router.features.writers.queue import SharedQueue, encode_record
from router.features.writers.runner import WriterRunner, ZoneView

__all__ = ["main", "messages", "drain_cpu"]

#: (service name, perfdata items) of the results; Icinga's plugins' shapes.
SERVICES: tuple[tuple[str, list[str]], ...] = (
    ("ping 4", ["rta=0.052000ms;100.000000;500.000000;0.000000",
                "pl=0%;5;10;0", "rtmax=0.081000ms;;;;", "rtmin=0.033000ms;;;;"]),
    ("disk space", ["/=2643MB;48386;54434;0;60483", "/boot=68MB;88;99;0;110",
                    "/home=69357MB;253497;285184;0;316872", "/var/log=812MB;1000;2000;0;3000",
                    "'/srv data'=10GB;80;90;0;100"]),
    ("load average", ["load1=0.010;5.000;10.000;0;", "load5=0.030;4.000;6.000;0;",
                      "load15=0.050;3.000;4.000;0;"]),
    ("http server", ["time=0.002130s;1.000000;2.000000;0.000000;10.000000",
                     "size=5469B;;;0", "'time connect'=0.000120s;;;0"]),
)


def messages(count: int, hosts: int, seed: int = 1, start: float | None = None) -> list[bytes]:
    """``count`` ``event::CheckResult`` messages as an agent sends them (and the node
    stores them), round robin over ``hosts`` hosts x the services above, with increasing
    microsecond timestamps and varying values."""
    rnd = random.Random(seed)
    out = []
    t0 = (time.time() if start is None else start) - count * 1e-4
    for i in range(count):
        host = f"agent-{i % hosts:05d}.example.com"
        service, perfdata = SERVICES[(i // hosts) % len(SERVICES)]
        end = t0 + i * 1e-4
        values = [p.replace("0.0", f"{rnd.random():.4f}", 1) for p in perfdata]
        cr = {
            "active": True, "check_source": host,
            "command": ["/usr/lib/nagios/plugins/check_" + service.split()[0], "-H", host],
            "execution_end": end, "execution_start": end - 0.01, "exit_status": 0,
            "output": f"OK - {service} is fine", "performance_data": values,
            "previous_hard_state": 0, "schedule_end": end, "schedule_start": end - 0.012,
            "scheduling_source": host, "state": 0, "ttl": 0, "type": "CheckResult",
            "vars_after": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
            "vars_before": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
        }
        out.append(orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult",
                                 "params": {"cr": cr, "host": host, "service": service},
                                 "ts": end}))
    return out


class FormatOnlyGraphite(GraphiteBackend):
    """Carbon's backend with the socket left out: the batch's bytes are built, not sent."""

    async def open(self) -> None:
        pass

    async def write(self, batch: Batch) -> None:
        self.sent = self.lines(batch)


class FormatOnlyInfluxdb(InfluxdbBackend):
    """InfluxDB's backend with the HTTP request left out: the body is built, not sent."""

    async def open(self) -> None:
        pass

    async def write(self, batch: Batch) -> None:
        self.sent = self.lines(batch)


class FormatOnlyPostgresql(PostgresqlBackend):
    """PostgreSQL's backend without the database: rows and statement arguments only."""

    async def open(self) -> None:
        pass

    async def committed_position(self) -> int | None:
        return None

    async def holds_role(self, now: float) -> bool:
        return True

    async def write(self, batch: Batch) -> None:
        skipped: list[str] = []
        self.sent = state_changes(self._rows(batch, skipped), {})


FACTORIES: dict[str, Callable[..., Any]] = {
    "graphite": FormatOnlyGraphite, "influxdb": FormatOnlyInfluxdb,
    "postgresql": FormatOnlyPostgresql}


def fill(path: Path, raws: list[bytes], names: list[str]) -> SharedQueue:
    queue = SharedQueue(path)
    queue.retain(set(names))
    now = time.time()
    for i in range(0, len(raws), 2048):
        queue.append_encoded([encode_record(now, raw) for raw in raws[i:i + 2048]], {})
    return queue


async def _drain(queue: SharedQueue, names: list[str], batch: int, expected: int) -> None:
    view: HAView = ZoneView("master1", ("master1",))
    executor = concurrent.futures.ThreadPoolExecutor(4, "writers-io")
    specs = [WriterSpec(name, name, flush_threshold=batch,
                        dsn="postgresql://bench@127.0.0.1/none") for name in names]
    shared: dict[str, Any] = {}
    try:                                    # the writers' process shares one (records.py)
        from router.features.writers.records import RecordCache
        shared["records"] = RecordCache(max(2048, 2 * batch * len(names)))
    except ImportError:                     # the tree before it: each runner decodes
        pass
    runners = [WriterRunner(spec, queue.reader(spec.name), "master1", view, executor,
                            factory=FACTORIES[spec.name], **shared) for spec in specs]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    deadline = time.monotonic() + 600
    while any(r.written + r.invalid < expected for r in runners):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    executor.shutdown()
    for r in runners:
        if r.errors or r.written != expected:
            raise RuntimeError(f"writer {r.spec.name} wrote {r.written} of {expected} "
                               f"results, errors {r.errors}")


def drain_cpu(raws: list[bytes], names: list[str], batch: int = 1024,
              profile: cProfile.Profile | None = None) -> float:
    """CPU seconds (this process, all threads) the runners of ``names`` take to drain a
    queue holding ``raws``; the filling is not counted."""
    import uvloop
    with tempfile.TemporaryDirectory(prefix="bench-writer-format-") as tmp:
        queue = fill(Path(tmp) / "writers-queue", raws, names)
        try:
            c0 = time.process_time()
            if profile is not None:
                profile.enable()
            uvloop.run(_drain(queue, names, batch, len(raws)))
            if profile is not None:
                profile.disable()
            return time.process_time() - c0
        finally:
            queue.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=20_000)
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024, help="flush_threshold")
    ap.add_argument("--profile", choices=[*FACTORIES, "all"], default=None)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    raws = messages(args.results, args.hosts)
    try:                                    # what the writers' process does at start
        from router.features.writers.child import tune_gc
        tune_gc()
    except ImportError:                     # the tree before it: Python's defaults
        pass
    if args.profile:
        prof = cProfile.Profile()
        names = list(FACTORIES) if args.profile == "all" else [args.profile]
        drain_cpu(raws, names, args.batch, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    sets = {name: [name] for name in FACTORIES}
    sets["all three"] = list(FACTORIES)
    samples: dict[str, list[float]] = {k: [] for k in sets}
    for _ in range(args.repeat):
        for key, names in sets.items():            # interleaved: noise hits every set
            samples[key].append(drain_cpu(raws, names, args.batch) / args.results * 1e6)
    out = {"results": args.results, "hosts": args.hosts, "batch": args.batch,
           "bytes_per_result": round(statistics.mean(map(len, raws))),
           "cpu_us_per_result": {
               k: {"median": round(statistics.median(v), 2),
                   "min": round(min(v), 2), "max": round(max(v), 2)}
               for k, v in samples.items()}}
    print(json.dumps(out, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
