"""The Graphite and InfluxDB writers after a review (2026-12-07), against a real
carbon-cache and influxd; each test failed on the code before its fix.

- Graphite confirmed a batch while its last lines were still in the transport's buffer
  (``drain`` returns at the low-water mark): lost when the writers' process stopped.
- A batch of results with hundreds of perfdata values each made one InfluxDB request
  beyond influxd's 25 MB body limit, answered 413 on every retry: the queue blocked.
- A value or threshold that overflowed to infinity once scaled to its unit lost the
  whole result in Graphite and the whole point in InfluxDB.
- A tab, a carriage return or a no-break space in a name made carbon drop the line.
- A reload while ``check_tasks`` restarted a crashed runner ran a removed writer again,
  or two runners of one writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config import WriterSpec
from router.features.writers.child import WritersProcess
from router.features.writers.influxdb import request_bodies
from router.features.writers.queue import SharedQueue, shared_queue_path
from router.features.writers.runner import WriterRunner, ZoneView
from router.features.writers.spec import spec_to_json
from tests.backends import CarbonServer, carbon_server, influx_server, require_carbon

__all__ = ["carbon_server", "influx_server"]  # fixtures, imported to be found by pytest

REPO = Path(__file__).resolve().parent.parent


def message(host: str, service: str | None, end: float, perfdata: list[str]) -> bytes:
    params: dict[str, Any] = {"host": host, "cr": {
        "command": ["/usr/lib/nagios/plugins/check_x"], "execution_start": end - 0.1,
        "execution_end": end, "state": 0, "performance_data": perfdata}}
    if service is not None:
        params["service"] = service
    return orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult", "params": params})


def filled_queue(path: Path, name: str, raws: list[bytes]) -> SharedQueue:
    queue = SharedQueue(path)
    queue.register(name)
    now = time.time()
    for i in range(0, len(raws), 500):
        queue.append_many([(now, raw) for raw in raws[i:i + 500]], {})
    return queue


def run_runner(spec: WriterSpec, queue: SharedQueue, seconds: float) -> WriterRunner:
    """A ``WriterRunner`` on ``queue`` until its backlog is written (at most ``seconds``)."""
    pool = concurrent.futures.ThreadPoolExecutor(4)
    runner = WriterRunner(spec, queue.reader(spec.name), "n", ZoneView("n", ("n",)), pool)
    head = queue.stats(spec.name).head

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and runner.queue.stats().position < head:
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    pool.shutdown()
    return runner


def eventually(read: Callable[[], Any], seconds: float = 10) -> Any:
    """``read()`` until it returns something true (carbon writes whisper files a little
    after it read the lines); its last answer."""
    deadline = time.monotonic() + seconds
    got = read()
    while not got and time.monotonic() < deadline:
        time.sleep(0.3)
        got = read()
    return got


def test_graphite_writes_the_rest_of_a_result_with_an_overflowing_value(tmp_path,
                                                                        carbon_server):
    end = float(int(time.time()) - 60)
    queue = filled_queue(tmp_path / "q", "g", [message("h1", "disk", end,
                                                       ["ok=1", "big=1e306KB"])])
    spec = WriterSpec("g", "graphite", port=carbon_server.port, flush_interval=0.05)
    runner = run_runner(spec, queue, 10.0)
    metric = "icinga2.h1.services.disk.check_x.perfdata.ok.value"
    assert eventually(lambda: carbon_server.fetch(metric, end - 5)) == [(int(end), 1.0)], \
        runner.errors
    assert runner.errors == {"perfdata": 1}
    queue.close()


def test_influx_writes_a_point_whose_threshold_overflows(tmp_path, influx_server):
    end = time.time() - 60
    queue = filled_queue(tmp_path / "q", "i", [message("h1", "disk", end,
                                                       ["x=1KB;;;0;1e306", "y=2"])])
    spec = WriterSpec("i", "influxdb", url=influx_server.url, enable_send_thresholds=True,
                      flush_interval=0.05)
    runner = run_runner(spec, queue, 10.0)
    assert influx_server.count("icinga2", where="metric = 'y'") == 1
    assert influx_server.count("icinga2", where="metric = 'x'") == 1, runner.errors
    queue.close()


@pytest.mark.parametrize("host, label", [("web\t01", "rta"), ("web01", "'in\u00a0use'"),
                                         ("web01", "'a\rb'")])
def test_whitespace_in_names_does_not_lose_the_value(tmp_path, carbon_server, host, label):
    end = float(int(time.time()) - 60)
    queue = filled_queue(tmp_path / "q", "g", [message(host, "svc", end, [f"{label}=7"])])
    spec = WriterSpec("g", "graphite", port=carbon_server.port, flush_interval=0.05)
    runner = run_runner(spec, queue, 10.0)
    assert queue.stats("g").backlog == 0 and runner.errors == {}
    assert eventually(carbon_server.metrics), "carbon dropped the line as invalid"
    queue.close()


def test_request_bodies_cut_at_line_ends() -> None:
    body = b"aaa\nbb\ncccccccc\nd\n"
    for limit in (1, 3, 4, 7, 100):
        parts = request_bodies(body, limit)
        assert b"".join(parts) == body
        assert all(p.endswith(b"\n") for p in parts)
        assert all(len(p) <= limit or p.count(b"\n") == 1 for p in parts)
    assert request_bodies(b"aaa\nbb\ncccccccc\nd\n", 7) == [b"aaa\nbb\n", b"cccccccc\n",
                                                           b"d\n"]
    assert request_bodies(b"", 5) == []


@pytest.mark.slow
def test_a_batch_of_big_results_does_not_block_the_queue(tmp_path, influx_server):
    # A switch's interface check: 48 ports x 5 values = 240 perfdata values per result;
    # a batch of 1 024 of them is some 40 MB of line protocol.
    perfdata = [f"'GigabitEthernet1/0/{p}_{m}'={p * 1.5}%;80;90;0;100"
                for p in range(1, 49) for m in ("usage_in", "usage_out", "errors_in",
                                                "errors_out", "discards")]
    base = 1_700_000_000.0
    raws = [message(f"switch{i % 100:03d}.example.com", "interface-usage", base + i,
                    perfdata) for i in range(1024)]
    raws.append(message("last-host", "ping", base + 5000, ["rta=1ms"]))
    queue = filled_queue(tmp_path / "q", "influx", raws)
    spec = WriterSpec("influx", "influxdb", url=influx_server.url, database="icinga2",
                      enable_send_thresholds=True, timeout=10.0)
    runner = run_runner(spec, queue, 60.0)
    assert queue.stats("influx").backlog == 0, runner.errors
    assert influx_server.count("icinga2", where="hostname = 'last-host'") == 1
    queue.close()


def _configure(data_dir: Path, specs: list[WriterSpec]) -> dict[str, Any]:
    return {"op": "configure", "node_name": "n", "data_dir": str(data_dir),
            "zone_endpoints": ["n"], "writers": [spec_to_json(s) for s in specs]}


def _writer_tasks(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"writer-{name}" and not t.done()]


@pytest.mark.parametrize("change", ["removed", "changed"])
def test_a_reload_during_a_crash_restart_leaves_one_runner_per_writer(tmp_path, carbon_server,
                                                                      change):
    v1 = WriterSpec("g", "graphite", port=carbon_server.port, flush_interval=0.2)
    v2 = WriterSpec("g", "graphite", port=carbon_server.port, flush_interval=0.5)
    data_dir = tmp_path / "data"

    async def main() -> tuple[int, bool, object, int]:
        proc = WritersProcess(io.BytesIO())
        await proc.configure(_configure(data_dir, [v1]))
        await asyncio.sleep(0.3)
        _, runner, task = proc._runners["g"]
        real_step = runner._step

        async def crash_once() -> None:                  # a bug: the runner's task ends
            runner._step = real_step                     # type: ignore[method-assign]
            raise RuntimeError("bug")
        runner._step = crash_once                        # type: ignore[method-assign]
        while not task.done():
            await asyncio.sleep(0.05)
        restart = asyncio.create_task(proc.check_tasks())   # waits 1 s, then restarts
        await asyncio.sleep(0.3)
        await proc.configure(_configure(data_dir, [] if change == "removed" else [v2]))
        await restart
        await asyncio.sleep(0.3)
        live = len(_writer_tasks("g"))
        tracked = "g" in proc._runners
        spec = proc._runners["g"][0] if tracked else None
        await proc.stop()
        left = len(_writer_tasks("g"))
        for t in _writer_tasks("g"):
            t.cancel()
        return live, tracked, spec, left

    live, tracked, spec, left = asyncio.run(main())
    if change == "removed":
        assert not tracked and live == 0, (live, tracked)
    else:
        assert live == 1 and spec == v2, (live, spec)
    assert left == 0


LABELS = [f"some_rather_long_perfdata_label_number_{k:02d}" for k in range(10)]


@pytest.fixture
def carbon_keeping_a_year(tmp_path: Path) -> Iterator[CarbonServer]:
    require_carbon()
    server = CarbonServer(tmp_path / "carbon")
    (server.conf_dir / "storage-schemas.conf").write_text(
        "[default]\npattern = .*\nretentions = 1s:400d\n")
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.mark.slow
def test_confirmed_graphite_lines_reach_carbon_after_a_normal_stop(tmp_path,
                                                                   carbon_keeping_a_year):
    """The real writers' process against a carbon that stalls (SIGSTOP: a pause, a slow
    disk), then a normal stop of the node (end of its stdin): every result the writer
    confirmed must reach carbon once it resumes."""
    carbon = carbon_keeping_a_year
    n = 12_000
    now = time.time()
    base = int(now) - n - 3600
    data_dir = tmp_path / "data"
    queue = SharedQueue(shared_queue_path(str(data_dir)))
    queue.register("graphite")
    raws = [message("host1", "svc", base + i, [f"{label}={i}" for label in LABELS])
            for i in range(n)]
    for i in range(0, n, 500):
        queue.append_many([(now, r) for r in raws[i:i + 500]], {})
    first = queue.stats("graphite").position
    assert carbon.proc is not None
    os.kill(carbon.proc.pid, signal.SIGSTOP)
    spec = WriterSpec("graphite", "graphite", host="127.0.0.1", port=carbon.port,
                      flush_threshold=25, flush_interval=0.01, timeout=2.0)
    child = subprocess.Popen([sys.executable, "-m", "router.features.writers.child"],
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    assert child.stdin is not None and child.stdout is not None
    latest: dict[str, Any] = {}

    def read_stats() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if msg.get("op") == "stats":
                latest.update(msg["writers"])
    threading.Thread(target=read_stats, daemon=True).start()
    child.stdin.write(orjson.dumps({
        "op": "configure", "node_name": "n", "data_dir": str(data_dir),
        "log_level": "warning", "zone_endpoints": ["n"],
        "writers": [spec_to_json(spec)]}) + b"\n")
    child.stdin.flush()
    deadline = time.monotonic() + 30               # until a write to the stalled carbon
    while time.monotonic() < deadline:             # timed out
        time.sleep(0.5)
        if latest.get("graphite", {}).get("errors", {}).get("timeout"):
            break
    time.sleep(1.0)
    child.stdin.close()                            # the node stops
    child.wait(30)
    os.kill(carbon.proc.pid, signal.SIGCONT)
    confirmed = queue.stats("graphite").position - first
    queue.close()
    assert confirmed > 0
    metric = f"icinga2.host1.services.svc.check_x.perfdata.{LABELS[-1]}.value"
    seen: set[int] = set()
    stable = 0
    for _ in range(120):                           # until carbon has written it all
        time.sleep(1)
        got = {ts for ts, _ in carbon.fetch(metric, base - 10)}
        if got and got == seen:
            stable += 1
            if stable >= 4:
                break
        else:
            stable = 0
        seen = got
    missing = [i for i in range(confirmed) if base + i not in seen]
    assert not missing, f"{len(missing)} of {confirmed} confirmed results never reached carbon"
