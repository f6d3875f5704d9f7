"""The PostgreSQL writer against a real PostgreSQL 15 (issue 19): schema, state, history,
refused rows, the position stored with the rows, timeouts. HA is in
test_writer_postgresql_ha.py.

Every test gets its own database on one server per module; the tests that crash or hang the
server get a server of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from router.config import WriterSpec
from router.features.writers.base import WriterBackendError
from router.features.writers.postgresql import PostgresqlBackend
from router.features.writers.postgresql_schema import LATEST, MIGRATIONS, migrate
from router.features.writers.queue import SharedQueue
from router.features.writers.runner import WriterRunner, ZoneView
from tests.backends_postgresql import PostgresServer, postgresql_server, require_postgresql

__all__ = ["postgresql_server"]  # the fixture, imported to be found by pytest

_SCHEMAS = itertools.count(1)


@pytest.fixture
def dsn(postgresql_server: PostgresServer) -> str:
    """A DSN of its own for each test: a fresh schema, named by ``search_path``."""
    return postgresql_server.create_schema(f"w{os.getpid()}_{next(_SCHEMAS)}")


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server this test may crash or hang without disturbing the others."""
    server = PostgresServer(require_postgresql())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def make_backend(dsn: str, node: str = "master1", *, errors: list[str] | None = None,
                 zone: tuple[str, ...] = ("master1",), view: ZoneView | None = None,
                 **options: Any) -> PostgresqlBackend:
    options.setdefault("timeout", 5.0)
    spec = WriterSpec(name=options.pop("name", "pg"), type="postgresql", dsn=dsn, **options)
    sink = errors if errors is not None else []
    return PostgresqlBackend(spec, node, view or ZoneView(node, zone), sink.append)


def result(host: str, service: str | None, state: int, end: float, *,
           state_type: int = 1, output: str = "", perfdata: Any = None) -> dict[str, Any]:
    cr: dict[str, Any] = {
        "state": state, "output": output or f"state {state} at {end}",
        "performance_data": perfdata if perfdata is not None else [f"time={end}s"],
        "check_source": "agent1", "command": ["/usr/lib/nagios/plugins/check_dummy"],
        "execution_start": end - 0.5, "execution_end": end,
        "vars_after": {"state_type": state_type, "state": state, "attempt": 1},
    }
    record: dict[str, Any] = {"host": host, "cr": cr}
    if service is not None:
        record["service"] = service
    return record


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# -- schema ---------------------------------------------------------------------------


def test_tables_created_on_first_start(run, dsn: str) -> None:
    async def scenario() -> None:
        first = make_backend(dsn)
        await first.open()
        await first.close()
        # A second start finds everything in place and changes nothing.
        second = make_backend(dsn, "master2")
        await second.open()
        await second.close()
        versions = await fetch(dsn, "SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in MIGRATIONS]
        tables = await fetch(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = "
                                  "current_schema() ORDER BY tablename")
        assert [r["tablename"] for r in tables] == [
            "checkable_state", "schema_version", "state_history", "writer_instance",
            "writer_position"]

    run(scenario())


def test_tables_in_public_or_in_the_schema_named_by_the_dsn(
        run, postgresql_server: PostgresServer) -> None:
    name = f"own{os.getpid()}_{next(_SCHEMAS)}"
    plain = postgresql_server.create_database(name)
    in_schema = postgresql_server.create_schema("router", name)

    async def scenario() -> None:
        for dsn in (plain, in_schema):
            backend = make_backend(dsn, enable_ha=False)
            await backend.open()
            await backend.write([(1, result("a", "s", 0, 1.0))])
            await backend.close()
        tables = await fetch(plain, "SELECT schemaname FROM pg_tables "
                                    "WHERE tablename = 'checkable_state' ORDER BY 1")
        assert [r["schemaname"] for r in tables] == ["public", "router"]

    run(scenario())


def test_older_schema_is_migrated_and_keeps_its_rows(run, dsn: str) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            assert await migrate(conn, target=1) == (0, 1)
            await conn.execute(
                "INSERT INTO checkable_state (host, service, state, execution_end) "
                "VALUES ('old', '', 0, now())")
        finally:
            await conn.close()
        backend = make_backend(dsn)
        await backend.open()
        try:
            assert await backend.holds_role(time.time())
            await backend.write([(1, result("web1", "http", 0, time.time()))])
            assert await backend.committed_position() == 1  # writer_position came with v2
        finally:
            await backend.close()
        versions = await fetch(dsn, "SELECT max(version) AS v FROM schema_version")
        assert versions[0]["v"] == LATEST
        hosts = await fetch(dsn, "SELECT host FROM checkable_state ORDER BY host")
        assert [r["host"] for r in hosts] == ["old", "web1"]
        index = await fetch(dsn, "SELECT 1 FROM pg_indexes WHERE indexname = "
                                 "'state_history_checkable_time'")
        assert index

    run(scenario())


def test_schema_newer_than_the_code_is_refused(run, dsn: str) -> None:
    async def scenario() -> None:
        backend = make_backend(dsn)
        await backend.open()
        await backend.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute("INSERT INTO schema_version (version, description) "
                           "VALUES ($1, 'from the future')", LATEST + 1)
        await conn.close()
        again = make_backend(dsn)
        with pytest.raises(WriterBackendError) as caught:
            await again.open()
        assert caught.value.reason == "schema"
        assert str(LATEST + 1) in str(caught.value)
        await again.close()

    run(scenario())


def test_two_nodes_creating_the_tables_at_once(run, dsn: str) -> None:
    async def scenario() -> None:
        backends = [make_backend(dsn, f"master{i}", enable_ha=False) for i in range(4)]
        await asyncio.gather(*(b.open() for b in backends))
        for b in backends:
            await b.close()
        versions = await fetch(dsn, "SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in MIGRATIONS]

    run(scenario())


# -- state and history ----------------------------------------------------------------


def test_state_upsert_never_goes_backwards_and_history_has_each_change(run, dsn: str) -> None:
    t = 1_700_000_000.0

    async def scenario() -> None:
        backend = make_backend(dsn)
        await backend.open()
        assert await backend.holds_role(time.time())
        try:
            # One batch with three results of one service: the changes inside a batch count.
            await backend.write([
                (1, result("web1", "http", 0, t + 1)),
                (2, result("web1", "http", 0, t + 2)),                # no change
                (3, result("web1", "http", 2, t + 3, state_type=0)),  # OK -> CRITICAL soft
                (4, result("web1", None, 1, t + 3)),                  # host check: WARNING=UP
            ])
            await backend.write([
                (5, result("web1", "http", 2, t + 4, state_type=1)),  # soft -> hard
                (6, result("web1", "http", 1, t + 0.5)),              # older: ignored
                (7, result("web1", None, 2, t + 5)),                  # host DOWN
            ])
            # A result older than the stored one, alone in its batch: still ignored.
            await backend.write([(8, result("web1", "http", 0, t + 3.5))])
        finally:
            await backend.close()
        rows = await fetch(dsn, "SELECT host, service, state, state_type, output, perfdata, "
                                "check_source, extract(epoch FROM execution_end) AS end "
                                "FROM checkable_state ORDER BY service")
        assert [(r["service"], r["state"], r["state_type"], float(r["end"])) for r in rows] \
            == [("", 1, 1, t + 5), ("http", 2, 1, t + 4)]
        assert rows[1]["output"] == f"state 2 at {t + 4}"
        assert rows[1]["perfdata"] == f"time={t + 4}s"
        assert rows[1]["check_source"] == "agent1"
        history = await fetch(dsn, "SELECT service, state, state_type, previous_state, "
                                   "previous_state_type, extract(epoch FROM execution_end) "
                                   "AS end FROM state_history ORDER BY id")
        assert [(r["service"], r["state"], r["state_type"], r["previous_state"],
                 r["previous_state_type"], float(r["end"])) for r in history] == [
            ("http", 0, 1, None, None, t + 1),
            ("http", 2, 0, 0, 1, t + 3),
            ("", 0, 1, None, None, t + 3),
            ("http", 2, 1, 2, 0, t + 4),
            ("", 1, 1, 0, 1, t + 5),
        ]

    run(scenario())


def test_replaying_a_batch_changes_nothing(run, dsn: str) -> None:
    """What a passive node taking over does with its backlog: results the database already
    has neither move the state nor add history."""
    t = 1_700_000_000.0
    batch = [(i, result(f"h{i % 3}", "load", i % 2 * 2, t + i)) for i in range(1, 13)]

    async def scenario() -> None:
        backend = make_backend(dsn, enable_ha=False)
        await backend.open()
        try:
            await backend.write(batch)
            before = await fetch(dsn, "SELECT * FROM checkable_state ORDER BY host")
            history = await fetch(dsn, "SELECT count(*) AS n FROM state_history")
            await backend.write(batch)
            await backend.write(batch[:5])
            after = await fetch(dsn, "SELECT * FROM checkable_state ORDER BY host")
            assert [dict(r) | {"updated_at": None} for r in after] == \
                [dict(r) | {"updated_at": None} for r in before]
            assert (await fetch(dsn, "SELECT count(*) AS n FROM state_history"))[0]["n"] \
                == history[0]["n"] == 12
        finally:
            await backend.close()

    run(scenario())


def test_perfdata_objects_and_strings_are_stored_as_text(run, dsn: str) -> None:
    async def scenario() -> None:
        backend = make_backend(dsn, enable_ha=False)
        await backend.open()
        try:
            await backend.write([
                (1, result("a", "s1", 0, 10.0, perfdata="rta=1ms;5;10 pl=0%")),
                (2, result("a", "s2", 0, 10.0, perfdata=[
                    "load1=0.5;1;2", {"type": "PerfdataValue", "label": "disk space",
                                      "value": 12, "unit": "B", "warn": 100, "crit": None,
                                      "min": 0}])),
                (3, result("a", "s3", 0, 10.0, perfdata=[])),
            ])
        finally:
            await backend.close()
        rows = await fetch(dsn, "SELECT service, perfdata FROM checkable_state ORDER BY 1")
        assert [r["perfdata"] for r in rows] == [
            "rta=1ms;5;10 pl=0%", "load1=0.5;1;2 'disk space'=12B;100;;0", ""]

    run(scenario())


# -- refused rows and bad records ---------------------------------------------------------


def test_a_row_postgresql_refuses_is_counted_and_the_rest_written(run, dsn: str) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        backend = make_backend(dsn, errors=errors)
        await backend.open()
        assert await backend.holds_role(time.time())
        try:
            await backend.write([
                (10, result("a", "ok1", 0, 100.0)),
                (11, result("a", "nul", 2, 100.0, output="bad\x00output")),  # text refuses NUL
                (12, {"service": "no host", "cr": {"state": 0}}),             # not a result
                (13, result("a", "huge", 70_000, 100.0)),                    # not a smallint
                (14, result("a", "surrogate", 0, 100.0, output="x\udc80")),  # not UTF-8
                (15, result("a", "ok2", 1, 100.0)),
            ])
            assert await backend.committed_position() == 15
        finally:
            await backend.close()
        assert sorted(errors) == ["bad_record", "bad_record", "refused_row", "refused_row"]
        rows = await fetch(dsn, "SELECT service FROM checkable_state ORDER BY 1")
        assert [r["service"] for r in rows] == ["ok1", "ok2"]
        history = await fetch(dsn, "SELECT service FROM state_history ORDER BY 1")
        assert [r["service"] for r in history] == ["ok1", "ok2"]

    run(scenario())


def test_a_batch_of_only_refused_rows_still_moves_the_position(run, dsn: str) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        backend = make_backend(dsn, errors=errors)
        await backend.open()
        assert await backend.holds_role(time.time())
        try:
            await backend.write([(3, result("a\x00", "x", 0, 1.0)),
                                 (4, result("b", "y\x00", 0, 1.0))])
            assert await backend.committed_position() == 4
        finally:
            await backend.close()
        assert errors == ["refused_row", "refused_row"]
        assert await fetch(dsn, "SELECT * FROM checkable_state") == []

    run(scenario())


# -- the position ------------------------------------------------------------------------


def test_committed_position_round_trip_per_endpoint(run, dsn: str) -> None:
    async def scenario() -> None:
        one = make_backend(dsn, "master1", enable_ha=False)
        await one.open()
        assert await one.committed_position() is None
        await one.write([(5, result("a", "s", 0, 1.0)), (6, result("a", "s", 0, 2.0)),
                         (7, result("b", "s", 0, 2.0))])
        await one.close()
        again = make_backend(dsn, "master1", enable_ha=False)
        await again.open()
        assert await again.committed_position() == 7
        await again.write([(8, result("a", "s", 0, 3.0))])
        assert await again.committed_position() == 8
        await again.close()
        # Another node has its own queue, so its own position.
        other = make_backend(dsn, "master2", enable_ha=False)
        await other.open()
        assert await other.committed_position() is None
        await other.close()

    run(scenario())


def test_a_failed_batch_leaves_neither_rows_nor_position(run, dsn: str) -> None:
    """The rows and the position commit together: when the transaction fails (here the
    position table was taken away), nothing of the batch is in the database."""
    async def scenario() -> None:
        errors: list[str] = []
        backend = make_backend(dsn, enable_ha=False, errors=errors)
        await backend.open()
        batch = [(2, result("b", "s", 0, 2.0)), (3, {"host": "no cr"})]
        try:
            await backend.write([(1, result("a", "s", 0, 1.0))])
            conn = await asyncpg.connect(dsn)
            await conn.execute("ALTER TABLE writer_position RENAME TO writer_position_gone")
            with pytest.raises(WriterBackendError) as caught:
                await backend.write(batch)
            assert caught.value.reason == "database"
            assert errors == []  # counted when the batch commits, not per attempt
            await conn.execute("ALTER TABLE writer_position_gone RENAME TO writer_position")
            await conn.close()
            assert await backend.committed_position() == 1
            assert [r["host"] for r in await fetch(dsn, "SELECT host FROM checkable_state")] \
                == ["a"]
            # The same connection goes on once the table is back.
            await backend.write(batch)
            assert await backend.committed_position() == 3
            assert errors == ["bad_record"]
        finally:
            await backend.close()

    run(scenario())


# -- outages ----------------------------------------------------------------------------


def test_unreachable_database_at_start(run) -> None:
    from tests.nodeutil import free_port

    async def scenario() -> None:
        backend = make_backend(f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                               timeout=2.0)
        started = time.monotonic()
        with pytest.raises(WriterBackendError) as caught:
            await backend.open()
        assert caught.value.reason == "connect"
        assert time.monotonic() - started < 2.5
        assert not await backend.holds_role(time.time())
        with pytest.raises(WriterBackendError):
            await backend.write([(1, result("a", "s", 0, 1.0))])
        await backend.close()

    run(scenario())


def test_hung_database_times_out_then_recovers(run, own_server: PostgresServer) -> None:
    dsn = own_server.create_database("hang")

    async def scenario() -> None:
        backend = make_backend(dsn, timeout=1.0, enable_ha=False)
        await backend.open()
        await backend.write([(1, result("a", "s", 0, 1.0))])
        own_server.hang()
        try:
            started = time.monotonic()
            with pytest.raises(WriterBackendError) as caught:
                await backend.write([(2, result("a", "s", 2, 2.0))])
            assert caught.value.reason == "timeout"
            assert time.monotonic() - started < 3.0
            # Reopening while hung: a bounded failure too, never a hang.
            await backend.close()
            with pytest.raises(WriterBackendError) as caught:
                await backend.open()
            assert caught.value.reason in ("connect", "timeout")
        finally:
            own_server.unhang()
        await backend.close()
        await backend.open()
        assert await backend.committed_position() == 1
        await backend.write([(2, result("a", "s", 2, 2.0))])
        assert await backend.committed_position() == 2
        await backend.close()

    run(scenario())


def test_database_crash_and_restart(run, own_server: PostgresServer) -> None:
    dsn = own_server.create_database("crash")

    async def scenario() -> None:
        backend = make_backend(dsn, timeout=2.0, enable_ha=False)
        await backend.open()
        await backend.write([(1, result("a", "s", 0, 1.0))])
        own_server.crash()
        with pytest.raises(WriterBackendError) as caught:
            await backend.write([(2, result("a", "s", 2, 2.0))])
        assert caught.value.reason == "connection_lost"
        await backend.close()
        with pytest.raises(WriterBackendError) as caught:
            await backend.open()
        assert caught.value.reason == "connect"
        own_server.start()
        await backend.close()
        await backend.open()
        assert await backend.committed_position() == 1
        await backend.write([(2, result("a", "s", 2, 2.0))])
        rows = await fetch(dsn, "SELECT state FROM checkable_state")
        assert [r["state"] for r in rows] == [2]
        await backend.close()

    run(scenario())


def test_runner_retries_an_unreachable_database_then_writes_the_backlog(
        run, own_server: PostgresServer, tmp_path: Path) -> None:
    """Through the writers' runner: PostgreSQL down when the writer starts; the failures are
    counted (``connect``) and retried with backoff; once it is up the queued results are
    written and the position the database stored is the queue's."""
    dsn = own_server.create_database("runner")
    own_server.crash()
    spec = WriterSpec(name="pg", type="postgresql", dsn=dsn, timeout=2.0, flush_interval=0.1)
    shared = SharedQueue(tmp_path / "queue")
    queue = shared.reader("pg")
    shared.append_many([(time.time(), orjson.dumps({
        "jsonrpc": "2.0", "method": "event::CheckResult",
        "params": result(f"host{i}", "ping", 0, 1000.0 + i)})) for i in range(1, 6)], {})

    async def scenario() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            runner = WriterRunner(spec, queue, "master1", ZoneView("master1", ("master1",)),
                                  executor)
            task = asyncio.create_task(runner.run())
            try:
                while runner.errors.get("connect", 0) < 1:
                    await asyncio.sleep(0.05)
                assert runner.written == 0
                # Started while blocking the loop, on purpose: the runner's next attempt
                # (after its backoff) finds it up however long the start took here.
                own_server.start()
                while runner.written < 5:
                    assert not task.done()
                    await asyncio.sleep(0.05)
                assert runner.active
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        rows = await fetch(dsn, "SELECT count(*) AS n FROM checkable_state")
        assert rows[0]["n"] == 5
        stored = await fetch(dsn, "SELECT position FROM writer_position")
        stats = queue.stats()
        assert [r["position"] for r in stored] == [stats.position] == [stats.head]

    try:
        run(scenario())
    finally:
        shared.close()


def test_bench_writers_finds_the_postgresql_server_behind_a_dsn(postgresql_server) -> None:
    """perf.bench_writers reports PostgreSQL's CPU (its postmaster and backends) beside
    the writers' process, carbon and influxd: it finds the server by the DSN's port."""
    from perf.bench_writers import postgresql_server_pid
    pid = postgresql_server.postmaster_pid()
    assert pid is not None
    assert postgresql_server_pid(postgresql_server.dsn("bench")) == pid
    assert postgresql_server_pid(f"host=127.0.0.1 port={postgresql_server.port}") == pid
    assert postgresql_server_pid("postgresql://u@127.0.0.1:1/x") is None   # nobody there
