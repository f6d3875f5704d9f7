"""The writers' durable queue, its node-side feed, the runner's retries, and the
``[[writers]]`` configuration."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import orjson
import pytest

from router.config import WriterSpec, parse_config
from router.config.diff import diff_configs
from router.errors import ConfigError
from router.features.writers.base import WriterBackendError
from router.features.writers.feed import ResultFeed
from router.features.writers.queue import SharedQueue, shared_queue_path
from router.features.writers.runner import WriterRunner, ZoneView
from router.features.writers.spec import spec_from_json, spec_to_json

MiB = 1 << 20


def test_queue_append_read_confirm_and_reopen(tmp_path: Path):
    q = SharedQueue(tmp_path / "q")
    w = q.reader("a")
    o = q.stats("a").head                # the origin: positions follow it
    assert q.append_many([(1.0, b"a"), (2.0, b"b"), (3.0, b"c")], {"a": 4 * MiB}) == (3, {})
    assert [(p - o, raw) for p, _, raw in w.read(0, 10)] == [(1, b"a"), (2, b"b"), (3, b"c")]
    w.confirm(o + 2)
    assert [p - o for p, _, _ in w.read(0, 10)] == [3]
    s = w.stats()
    assert (s.head - o, s.position - o, s.backlog, s.bytes) == (3, 2, 1, 9)
    assert q.held() == (1, 9)            # what every writer confirmed is deleted
    w.confirm(o + 99)                    # beyond the head: clamped
    assert w.stats().position == o + 3
    q.close()
    q = SharedQueue(tmp_path / "q")      # a restart resumes
    w = q.reader("a")
    assert w.stats().position == o + 3 and w.read(0, 10) == []
    assert q.append_many([(4.0, b"d")], {"a": 4 * MiB}) == (1, {})
    assert [p - o for p, _, _ in w.read(0, 10)] == [4]
    q.close()


def test_a_recreated_queue_starts_above_every_position_of_the_old_one(tmp_path: Path):
    """A backend that stores its position (PostgreSQL) may outlive the queue (a wiped
    data directory): the new queue's positions must all lie above the stored one, or
    the runner would confirm new records away as already written."""
    import shutil

    q = SharedQueue(tmp_path / "q")
    q.register("a")
    q.append_many([(1.0, b"x")] * 1000, {"a": 4 * MiB})
    stored = q.stats("a").head           # what the backend committed
    q.close()
    shutil.rmtree(tmp_path / "q")
    q = SharedQueue(tmp_path / "q")
    w = q.reader("a")
    q.append_many([(1.0, b"new")], {"a": 4 * MiB})
    [(position, _, raw)] = w.read(0, 10)
    assert raw == b"new" and position > stored
    q.close()


def test_queue_bounded_by_bytes_and_age_with_counted_evictions(tmp_path: Path):
    q = SharedQueue(tmp_path / "q")
    w = q.reader("a")
    now = time.time()
    big = b"x" * 100_000
    added, evicted = q.append_many([(now - 100 + i, big) for i in range(15)], {"a": MiB})
    assert added == 15 and evicted == {"a": 5}   # 15 x 100 008 bytes > 1 MiB
    s = w.stats()
    o = s.head - 15
    assert s.bytes <= 1 * MiB and s.evicted == 5 and s.position == o + 5 and s.backlog == 10
    assert w.read(0, 1)[0][0] == o + 6          # the oldest went first
    assert q.held()[0] == 10                    # and left the disk: no other writer
    assert w.evict_older(now - 100 + 10) == 5   # appended at -95..-91
    s = w.stats()
    assert s.evicted == 10 and s.backlog == 5 and s.position == o + 10
    assert q.held()[0] == 5
    q.close()


def test_feed_appends_once_for_every_writer(tmp_path: Path):
    specs = [WriterSpec("a", "graphite"), WriterSpec("b", "influxdb")]
    feed = ResultFeed(str(tmp_path), specs)
    for i in range(100):
        assert feed.submit(b'{"n":%d}' % i)
    assert feed.flush(10)
    assert feed.appended == {"a": 100, "b": 100}
    feed.reconfigure([specs[1], WriterSpec("c", "graphite")])
    feed.submit(b"{}")
    assert feed.flush(10)
    assert feed.appended == {"a": 100, "b": 101, "c": 1}
    feed.close()
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    assert q.writers() == ["b", "c"]              # a's position was forgotten
    s = q.stats("b")
    assert s.head - s.position == 101             # nothing confirmed: all 101 held
    assert q.stats("c").backlog == 1              # added at the reload: from the head
    assert q.held()[0] == 101                     # each result stored once
    q.close()


def test_feed_drops_and_counts_beyond_its_memory_bound(tmp_path: Path):
    feed = ResultFeed(str(tmp_path), [WriterSpec("a", "graphite")], max_pending_bytes=1000,
                      batch_seconds=0.5)
    results = [feed.submit(b"x" * 300) for _ in range(10)]
    assert results.count(False) >= 6 and feed.dropped == results.count(False)
    feed.close()


class ScriptedBackend:
    """A backend whose answers the test scripts: fail, hang, or keep what it is given."""

    def __init__(self, spec, node_name, ha, count_error) -> None:
        self.name = spec.name
        self.count_error = count_error
        self.plan: list[str] = []
        self.written: list[int] = []
        self.opens = 0

    async def open(self) -> None:
        self.opens += 1
        if self.plan and self.plan[0] == "refuse_open":
            self.plan.pop(0)
            raise WriterBackendError("connect", "refused")

    async def write(self, batch) -> None:
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "hang":
            await asyncio.sleep(3600)
        if step == "fail":
            raise WriterBackendError("http_500", "boom")
        self.written += [p for p, _ in batch]

    async def committed_position(self):
        return None

    async def holds_role(self, now: float) -> bool:
        return True

    async def close(self) -> None:
        pass


def test_runner_retries_times_out_and_confirms_only_after_success(tmp_path: Path,
                                                                  monkeypatch):
    monkeypatch.setattr("router.features.writers.runner.BACKOFF_MIN", 0.01)
    spec = WriterSpec("s", "graphite", flush_interval=0.01, flush_threshold=10, timeout=0.5)
    shared = SharedQueue(tmp_path / "q")
    q = shared.reader("s")
    o = q.stats().head
    msg = orjson.dumps({"method": "event::CheckResult", "params": {"host": "h"}})
    shared.append_many([(time.time(), msg)] * 25 + [(time.time(), b"not json")], {})
    pool = concurrent.futures.ThreadPoolExecutor(2)
    runner = WriterRunner(spec, q, "n", ZoneView("n", ("n",)), pool, factory=ScriptedBackend)
    backend = runner.backend
    assert isinstance(backend, ScriptedBackend)
    backend.plan = ["refuse_open", "fail", "hang"]

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 60
        while runner.stats()["backlog"] or runner.written < 25:
            assert time.monotonic() < deadline, runner.stats()
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    assert backend.written == list(range(o + 1, o + 26))   # each once, in order
    assert runner.errors == {"connect": 1, "http_500": 1, "timeout": 1, "invalid_record": 1}
    assert backend.opens >= 3
    assert q.stats().position == o + 26
    shared.close()
    pool.shutdown()


def test_spec_json_round_trip():
    spec = WriterSpec("i", "influxdb", username="u", password="p")
    assert spec_from_json(orjson.loads(orjson.dumps(spec_to_json(spec)))) == spec


BASE = """
[node]
name = "master"
data_dir = "/tmp/x"
[[zones]]
name = "master"
endpoints = ["master"]
[[endpoints]]
name = "master"
"""


def test_writers_config_parses_with_defaults_and_units():
    cfg = parse_config(BASE + """
[[writers]]
name = "carbon"
type = "graphite"
host = "graphite.example"
enable_send_thresholds = true
flush_interval = "500ms"
max_backlog_bytes = "64MiB"
max_backlog_age = "2h"
[[writers]]
name = "influx"
type = "influxdb"
url = "http://influx:8086"
database = "metrics"
username = "u"
password = "p"
service_template = { measurement = "$service.name$", tags = { host = "$host.name$" } }
[[writers]]
name = "pg"
type = "postgresql"
dsn = "postgresql://postgres@127.0.0.1/icinga"
failover_timeout = "30s"
""", "/etc/router.toml")
    carbon, influx, pg = cfg.writers
    assert (carbon.port, carbon.flush_interval, carbon.max_backlog_bytes,
            carbon.max_backlog_age) == (2003, 0.5, 64 * MiB, 7200.0)
    assert carbon.enable_send_thresholds and not carbon.enable_send_metadata
    assert carbon.host_name_template == "icinga2.$host.name$.host.$host.check_command$"
    assert influx.service_template["measurement"] == "$service.name$"
    assert dict(influx.service_template["tags"]) == {"host": "$host.name$"}
    assert influx.host_template["measurement"] == "$host.check_command$"
    assert pg.enable_ha and pg.failover_timeout == 30.0


@pytest.mark.parametrize("snippet, key, message", [
    ('name = "a"\ntype = "graphite"\ndsn = "x"', "writers[0].dsn", "option of type"),
    ('name = "a"\ntype = "grafite"', "writers[0].type", "did you mean 'graphite'"),
    ('type = "graphite"', "writers[0].name", "missing required key 'name'"),
    ('name = "a"\ntype = "graphite"\nport = 70000', "writers[0].port", ""),
    ('name = "a"\ntype = "influxdb"\nurl = "influx:8086"', "writers[0].url", "http://"),
    ('name = "a"\ntype = "postgresql"', "writers[0].dsn", "needs 'dsn'"),
    ('name = "a b"\ntype = "graphite"', "writers[0].name", "letters, digits"),
    ('name = "a"\ntype = "graphite"\nflush_interval = "0s"', "writers[0].flush_interval",
     "positive"),
    ('name = "a"\ntype = "graphite"\nenable_send_metadata = "yes"',
     "writers[0].enable_send_metadata", "true or false"),
    ('name = "a"\ntype = "influxdb"\nusername = "u"', "writers[0].password", "together"),
])
def test_writer_config_errors_name_key_and_line(snippet, key, message):
    text = BASE + "[[writers]]\n" + snippet + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/router.toml")
    err = info.value
    assert err.key == key and message in err.message
    assert err.line is not None and err.line >= BASE.count("\n") + 1


def test_duplicate_writer_names_are_refused():
    text = BASE + '[[writers]]\nname = "a"\ntype = "graphite"\n' \
                  '[[writers]]\nname = "a"\ntype = "influxdb"\n'
    with pytest.raises(ConfigError, match="defined twice"):
        parse_config(text, "/etc/router.toml")


def test_reload_diff_names_writers_added_removed_changed():
    old = parse_config(BASE + '[[writers]]\nname = "a"\ntype = "graphite"\n'
                              '[[writers]]\nname = "b"\ntype = "graphite"\n', None)
    new = parse_config(BASE + '[[writers]]\nname = "a"\ntype = "graphite"\nport = 2004\n'
                              '[[writers]]\nname = "c"\ntype = "graphite"\n', None)
    diff = diff_configs(old, new)
    assert (diff.writers_added, diff.writers_removed, diff.writers_changed) == \
        (("c",), ("b",), ("a",))
    assert "writers" not in diff.other and not diff.restart_required


def test_runner_stops_when_cancelled_as_a_backend_call_completes(tmp_path: Path):
    """Python 3.11's wait_for swallowed a cancellation that came in the turn its call
    completed: the runner went on and stopping it hung (CI, 120 s timeout)."""
    answered: list[asyncio.Future[bool]] = []

    class Gated(ScriptedBackend):
        async def holds_role(self, now: float) -> bool:
            answered.append(asyncio.get_running_loop().create_future())
            return await answered[-1]

    spec = WriterSpec("s", "graphite", flush_interval=0.01, flush_threshold=10, timeout=5)
    shared = SharedQueue(tmp_path / "q")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    runner = WriterRunner(spec, shared.reader("s"), "n", ZoneView("n", ("n",)), pool,
                          factory=Gated)

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 10
        while not answered:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        answered[-1].set_result(False)      # the call completes ...
        task.cancel()                       # ... and the stop comes in the same turn
        done, _ = await asyncio.wait([task], timeout=5)
        assert done and task.cancelled(), "the runner went on after it was cancelled"
        assert len(answered) == 1
    try:
        asyncio.run(main())
    finally:
        pool.shutdown()
        shared.close()


def test_runner_skips_a_record_that_makes_the_backend_crash(tmp_path: Path):
    class Crashy(ScriptedBackend):
        async def write(self, batch) -> None:
            if any(r.get("host") == "boom" for _, r in batch):
                raise KeyError("a bug")
            self.written += [p for p, _ in batch]

    spec = WriterSpec("s", "graphite", flush_interval=0.01, flush_threshold=10, timeout=1)
    shared = SharedQueue(tmp_path / "q")
    q = shared.reader("s")
    o = q.stats().head

    def msg(host: str) -> bytes:
        return orjson.dumps({"params": {"host": host}})
    shared.append_many([(time.time(), msg("a")), (time.time(), msg("boom")),
                        (time.time(), msg("c"))], {})
    pool = concurrent.futures.ThreadPoolExecutor(2)
    runner = WriterRunner(spec, q, "n", ZoneView("n", ("n",)), pool, factory=Crashy)

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 60
        while q.stats().position < o + 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    assert runner.backend.written == [o + 1, o + 3]    # type: ignore[attr-defined]
    assert runner.errors == {"internal_error": 1} and runner.written == 2
    shared.close()
    pool.shutdown()


def test_a_writers_process_whose_node_is_gone_stops_then_exits(tmp_path: Path):
    """The parent watch: a writers' process whose node is gone (re-parented) is asked
    to stop and, if the stop hangs, ends anyway: nothing of the writers outlives the
    node. A forked child plays the writers' process, with a stop that never completes;
    its parent plays the node and exits after 0.3 s."""
    import subprocess
    import sys

    marker = tmp_path / "asked"
    script = tmp_path / "orphan.py"
    script.write_text(f"""
import os, time
from router.features.writers.child import watch_parent
node = os.getpid()
if os.fork():
    time.sleep(0.3)
    os._exit(0)
watch_parent(node, lambda: open({str(marker)!r}, "w").close(), grace=0.5, interval=0.05)
time.sleep(30)
""")
    import os
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, str(script)],
                            env={**os.environ, "PYTHONPATH": root})
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while subprocess.run(["pgrep", "-f", str(script)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the orphaned writers' process did not exit"
        time.sleep(0.1)
    assert marker.exists()               # the clean stop was asked for first
