"""The PostgreSQL writer after a review (2026-12-07) against a real PostgreSQL 15: each
test failed on the code before its fix.

- A node cut off in the middle of a batch kept its transaction, and with it the fence's
  row lock, open on the server for as long as TCP keepalive took (hours): no takeover.
- A batch under way when authority moved renewed the released role: the peer waited a
  whole ``failover_timeout``.
- A host or service name too long for an index row (SQLSTATE 54000) failed its whole
  batch on every retry: the queue was blocked for good.
- A refused row was counted as written as well as refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import string
import time
from typing import Any

import asyncpg
import orjson
import uvloop

from router.config import WriterSpec
from router.features.scheduler import sdbm
from router.features.writers.base import WriterBackendError
from router.features.writers.queue import SharedQueue
from router.features.writers.runner import WriterRunner, ZoneView
from tests.backends_postgresql import postgresql_server
from tests.test_writer_postgresql import dsn, fetch, make_backend, result

__all__ = ["dsn", "postgresql_server"]  # fixtures, imported to be found by pytest

ZONE = ("master1", "master2")


def run(coro: Any, timeout: float = 90.0) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


async def wait_for_role(backend: Any, limit: float) -> float | None:
    """Seconds until ``backend`` holds the role, None if not within ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await backend.holds_role(time.time()):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


def incompressible(n: int, seed: int) -> str:
    """A name PostgreSQL cannot compress under its ~2 700-byte index row limit."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


class PartitionProxy:
    """A TCP forwarder; after ``partition()`` it drops every byte both ways and forwards
    no close: a dead network path, as both ends see it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.partitioned = False
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned:
            self._writers.append(writer)            # accepted, never answered
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if self.partitioned:
                if not data:
                    await asyncio.sleep(3600)       # a close is not forwarded either
                continue
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()


def test_a_node_cut_off_in_the_middle_of_a_batch_does_not_block_the_takeover(dsn: str
                                                                             ) -> None:
    failover = 2.0
    port = int(dsn.split(":")[2].split("/")[0])

    async def scenario() -> tuple[bool, list[str]]:
        proxy = PartitionProxy(port)
        await proxy.start()
        a = make_backend(dsn.replace(f":{port}/", f":{proxy.port}/"), "master1", zone=ZONE,
                         failover_timeout=failover, timeout=1.0)
        b = make_backend(dsn, "master2", zone=ZONE, failover_timeout=failover, timeout=1.0)
        blocker = await asyncpg.connect(dsn)
        try:
            await a.open()
            assert await wait_for_role(a, 5.0) is not None
            await a.write([(1, result("web1", None, 0, 1000.0))])
            await b.open()
            assert not await b.holds_role(time.time())
            # Hold web1's row so that master1's next batch stops right after its fence.
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT 1 FROM checkable_state WHERE host='web1' FOR UPDATE")
            write = asyncio.create_task(a.write([(2, result("web1", None, 2, 1001.0))]))
            for _ in range(200):
                if await blocker.fetch(
                        "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                        "'router master1 pg' AND wait_event_type = 'Lock'"):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("master1's batch never waited on the row lock")
            proxy.partitioned = True                 # the path to master1 dies
            await blocker.execute("ROLLBACK")
            try:
                await write
            except WriterBackendError:
                pass
            await a.close()                          # master1 is gone: no heartbeats
            took_over = await wait_for_role(b, failover * 5) is not None
            sessions = [f"{r['state']}/{r['wait_event_type']}: {r['q'].strip()}"
                        for r in await blocker.fetch(
                            "SELECT state, wait_event_type, left(query, 40) AS q "
                            "FROM pg_stat_activity WHERE application_name LIKE 'router %'")]
            return took_over, sessions
        finally:
            await b.close()
            await blocker.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name LIKE 'router master%'")
            await blocker.close()
            proxy.close()

    took_over, sessions = run(scenario())
    assert took_over, f"master2 never took over; sessions: {sessions}"


def test_a_batch_under_way_does_not_undo_the_release_of_the_role(dsn: str) -> None:
    failover = 8.0
    authoritative = sorted(ZONE)[sdbm("pg") % 2]
    other = next(e for e in ZONE if e != authoritative)
    first_view, second_view = ZoneView(other, ZONE), ZoneView(authoritative, ZONE)

    async def scenario() -> float | None:
        first = make_backend(dsn, other, zone=ZONE, failover_timeout=failover,
                             view=first_view)
        second = make_backend(dsn, authoritative, zone=ZONE, failover_timeout=failover,
                              view=second_view)
        await first.open()
        try:
            assert await wait_for_role(first, 5.0) is not None
            await second.open()
            assert not await second.holds_role(time.time())
            assert await first.holds_role(time.time())   # the runner decides to write ...
            first_view.update(ZONE, frozenset({authoritative}))    # ... the pair connects,
            second_view.update(ZONE, frozenset({other}))
            deadline = time.monotonic() + failover
            while first.active and time.monotonic() < deadline:   # first releases the role
                await asyncio.sleep(0.001)
            assert not first.active, "first never released the role"
            released = time.monotonic()
            try:                                     # ... and the batch is written
                await first.write([(1, result("web1", None, 0, 1000.0))])
            except WriterBackendError as e:
                assert e.reason == "role_lost"
            waited = await wait_for_role(second, failover * 1.5)
            return None if waited is None else time.monotonic() - released
        finally:
            await second.close()
            await first.close()

    took = run(scenario())
    assert took is not None and took < failover / 2, \
        f"the authoritative peer took over {took} s after the release"


def test_a_name_too_long_for_an_index_row_is_refused_alone(dsn: str) -> None:
    long_service = incompressible(4000, 1)

    async def scenario() -> tuple[list[str], int]:
        errors: list[str] = []
        backend = make_backend(dsn, enable_ha=False, errors=errors)
        await backend.open()
        try:
            skipped = await backend.write([(1, result("good1", "s", 0, 1.0)),
                                           (2, result("evil", long_service, 2, 2.0)),
                                           (3, result("good2", "s", 0, 3.0))])
        finally:
            await backend.close()
        return errors, skipped

    errors, skipped = run(scenario())
    hosts = run(fetch(dsn, "SELECT host FROM checkable_state ORDER BY host"))
    assert [r["host"] for r in hosts] == ["good1", "good2"]
    assert errors == ["refused_row"] and skipped == 1


def test_the_runner_writes_past_a_refused_result_and_counts_it_once(dsn: str, tmp_path
                                                                    ) -> None:
    spec = WriterSpec(name="pg", type="postgresql", dsn=dsn, timeout=2.0, flush_interval=0.1,
                      enable_ha=False)
    shared = SharedQueue(tmp_path / "queue")
    queue = shared.reader("pg")
    results = [result("good1", "ping", 0, 1000.0),
               result(incompressible(4000, 2), "ping", 2, 1001.0)] + [
        result(f"good{i}", "ping", 0, 1000.0 + i) for i in range(2, 6)]
    shared.append_many([(time.time(), orjson.dumps(
        {"jsonrpc": "2.0", "method": "event::CheckResult", "params": r})) for r in results],
        {})

    async def scenario() -> tuple[int, dict[str, int]]:
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            runner = WriterRunner(spec, queue, "master1", ZoneView("master1", ("master1",)),
                                  executor)
            task = asyncio.create_task(runner.run())
            try:
                deadline = time.monotonic() + 10
                while shared.stats("pg").backlog and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                return runner.written, dict(runner.errors)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    try:
        written, errors = run(scenario())
    finally:
        shared.close()
    hosts = [r["host"] for r in run(fetch(dsn, "SELECT host FROM checkable_state "
                                              "WHERE host LIKE 'good%' ORDER BY host"))]
    assert hosts == [f"good{i}" for i in range(1, 6)]
    assert errors == {"refused_row": 1}, errors
    assert written == 5, written             # the refused one is not "written" as well
