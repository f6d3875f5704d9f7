"""HA of the PostgreSQL writer against a real PostgreSQL 15 (issue 19): two endpoints of one
zone, one database, exactly one writes.

Split brain means the two writers don't talk to each other: only the database decides.
"kill -9" and "hung" need the active writer in a process of its own
(tests/pg_writer_proc.py); the other one runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from router.features.scheduler import sdbm
from router.features.writers.base import WriterBackendError
from router.features.writers.postgresql import PostgresqlBackend
from router.features.writers.runner import ZoneView
from tests.backends_postgresql import postgresql_server
from tests.test_writer_postgresql import dsn, fetch, make_backend, result

__all__ = ["dsn", "postgresql_server"]  # fixtures, imported to be found by pytest

ZONE = ("master1", "master2")
FAILOVER = 2.0
HEARTBEAT = FAILOVER / 4
#: Scheduling slack on a shared 2-core machine (ROUTER_TEST_TIME_SCALE stretches it).
SLACK = 1.0 * float(os.environ.get("ROUTER_TEST_TIME_SCALE", "1"))
DRIVER = Path(__file__).with_name("pg_writer_proc.py")


def ha_backend(dsn: str, node: str, **options: Any) -> PostgresqlBackend:
    options.setdefault("failover_timeout", FAILOVER)
    return make_backend(dsn, node, zone=ZONE, **options)


async def wait_for_role(backend: PostgresqlBackend, limit: float) -> float:
    """Seconds until ``backend`` holds the role (polling holds_role like the runner)."""
    started = time.monotonic()
    while not await backend.holds_role(time.time()):
        assert time.monotonic() - started < limit, f"{backend.name} never took over"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def holder(dsn: str) -> str | None:
    rows = await fetch(dsn, "SELECT endpoint_name FROM writer_instance WHERE writer_name='pg'")
    return rows[0]["endpoint_name"] if rows else None


def test_split_brain_exactly_one_writes_then_the_other_takes_over(run, dsn: str) -> None:
    async def scenario() -> None:
        a, b = ha_backend(dsn, "master1"), ha_backend(dsn, "master2")
        await asyncio.gather(a.open(), b.open())
        try:
            # Sampled often, for longer than the failover timeout: always exactly one.
            samples = []
            deadline = time.monotonic() + FAILOVER * 1.5
            while time.monotonic() < deadline:
                roles = await asyncio.gather(a.holds_role(time.time()),
                                             b.holds_role(time.time()))
                samples.append(roles)
                await asyncio.sleep(0.03)
            assert len(samples) > 20
            assert all(sum(roles) == 1 for roles in samples), samples
            active, passive = (a, b) if samples[-1][0] else (b, a)
            assert all(roles == samples[0] for roles in samples)  # no flapping
            assert await holder(dsn) == ("master1" if active is a else "master2")
            # The passive one is fenced: its batch is refused and nothing of it written.
            with pytest.raises(WriterBackendError) as caught:
                await passive.write([(1, result("from-passive", "s", 0, 1.0))])
            assert caught.value.reason == "role_lost"
            await active.write([(1, result("from-active", "s", 0, 1.0))])
            # The active one stops heartbeating (closed): the other takes over within
            # failover_timeout plus one heartbeat, not before the timeout.
            await active.close()
            last = (await fetch(dsn, "SELECT heartbeat_at FROM writer_instance"))[0][0]
            waited = await wait_for_role(passive, FAILOVER + HEARTBEAT + SLACK * 3)
            assert waited <= FAILOVER + HEARTBEAT + SLACK, waited
            # Not before the timeout either, by the database's clock.
            row = (await fetch(dsn, "SELECT endpoint_name, active_since "
                                    "FROM writer_instance"))[0]
            assert row["endpoint_name"] == ("master2" if active is a else "master1")
            assert (row["active_since"] - last).total_seconds() >= FAILOVER
            await passive.write([(2, result("from-new-active", "s", 0, 2.0))])
        finally:
            await a.close()
            await b.close()
        hosts = await fetch(dsn, "SELECT host FROM checkable_state ORDER BY host")
        assert [r["host"] for r in hosts] == ["from-active", "from-new-active"]

    run(scenario())


def test_connected_pair_follows_icinga_authority(run, dsn: str) -> None:
    """Connected, Icinga's object authority (SDBM of the writer name over the connected
    endpoints) picks the writer; the other one releases the role at once instead of the
    authoritative one waiting for failover_timeout. Disconnected, the holder keeps it."""
    failover = 8.0
    authoritative = sorted(ZONE)[sdbm("pg") % 2]
    other = next(e for e in ZONE if e != authoritative)

    first_view, second_view = ZoneView(other, ZONE), ZoneView(authoritative, ZONE)

    async def scenario() -> None:
        first = ha_backend(dsn, other, failover_timeout=failover, view=first_view)
        await first.open()
        try:
            # Alone (its peer not connected): it claims the role.
            assert await wait_for_role(first, 5.0) < 5.0
            second = ha_backend(dsn, authoritative, failover_timeout=failover,
                                view=second_view)
            await second.open()
            try:
                assert not await second.holds_role(time.time())
                connected = time.monotonic()
                first_view.update(ZONE, frozenset({authoritative}))
                second_view.update(ZONE, frozenset({other}))
                assert not await first.holds_role(time.time())
                waited = await wait_for_role(second, failover)
                assert time.monotonic() - connected < failover - 1.0, waited
                assert await holder(dsn) == authoritative
                # Split brain again: the database still names the authoritative one, which
                # keeps heartbeating; the other can't claim it.
                first_view.update(ZONE, frozenset())
                second_view.update(ZONE, frozenset())
                for _ in range(10):
                    assert await asyncio.gather(first.holds_role(time.time()),
                                                second.holds_role(time.time())) == [False, True]
                    await asyncio.sleep(0.1)
            finally:
                await second.close()
        finally:
            await first.close()

    run(scenario())


def test_without_ha_every_node_writes(run, dsn: str) -> None:
    async def scenario() -> None:
        a = ha_backend(dsn, "master1", enable_ha=False)
        b = ha_backend(dsn, "master2", enable_ha=False)
        await asyncio.gather(a.open(), b.open())
        try:
            assert await a.holds_role(time.time()) and await b.holds_role(time.time())
            await a.write([(1, result("h", "s", 0, 1.0))])
            await b.write([(9, result("h", "s", 2, 2.0))])
            assert (await a.committed_position(), await b.committed_position()) == (1, 9)
        finally:
            await a.close()
            await b.close()
        assert await fetch(dsn, "SELECT * FROM writer_instance") == []
        assert [r["state"] for r in await fetch(dsn, "SELECT state FROM checkable_state")] \
            == [2]

    run(scenario())


# -- the active writer in a process of its own ------------------------------------------------


class WriterProcess:
    """tests/pg_writer_proc.py: one command line in, one JSON line out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, command: str, timeout: float = 15.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert line, f"writer process exited: {self.process.returncode}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)


@asynccontextmanager
async def writer_process(dsn: str, node: str) -> AsyncIterator[WriterProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(DRIVER), dsn, node, str(FAILOVER), "5",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        yield WriterProcess(process)
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        await process.wait()


def run_uvloop(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


def test_kill9_of_the_active_writer_then_takeover(dsn: str) -> None:
    async def scenario() -> None:
        passive = ha_backend(dsn, "master2")
        async with writer_process(dsn, "master1") as active:
            assert await active.ask("open") == {"ok": True}
            assert await active.ask("role") == {"active": True}
            await passive.open()
            try:
                for _ in range(int(FAILOVER * 1.5 / 0.1)):
                    assert not await passive.holds_role(time.time())
                    await asyncio.sleep(0.1)
                assert await active.ask("role") == {"active": True}
                assert await active.ask("write web1 1 0") == {"ok": True}
                active.signal(signal.SIGKILL)
                await active.process.wait()
                waited = await wait_for_role(passive, FAILOVER + HEARTBEAT + SLACK * 3)
                assert waited <= FAILOVER + HEARTBEAT + SLACK, waited
                await passive.write([(1, result("web2", None, 0, time.time()))])
            finally:
                await passive.close()
        assert await holder(dsn) == "master2"
        hosts = await fetch(dsn, "SELECT host, output FROM checkable_state ORDER BY host")
        assert [r["host"] for r in hosts] == ["web1", "web2"]
        assert hosts[0]["output"] == "from master1"

    run_uvloop(scenario())


def test_a_hung_writer_that_wakes_up_after_takeover_is_fenced(dsn: str) -> None:
    """The old active node was stopped (a hang, a long GC pause) past failover_timeout; the
    other took over. Waking up, its next batch is refused by the database (the fence in the
    batch's transaction), before it has even noticed it lost the role."""
    async def scenario() -> None:
        other = ha_backend(dsn, "master2")
        async with writer_process(dsn, "master1") as old:
            assert await old.ask("open") == {"ok": True}
            assert await old.ask("role") == {"active": True}
            assert await old.ask("write web1 1 0") == {"ok": True}
            await other.open()
            try:
                assert not await other.holds_role(time.time())
                old.signal(signal.SIGSTOP)
                await wait_for_role(other, FAILOVER + HEARTBEAT + SLACK * 3)
                await other.write([(1, result("web1", None, 2, time.time()))])
                old.signal(signal.SIGCONT)
                answer = await old.ask("write web1 2 0")
                assert answer["error"] == "role_lost", answer
                assert await old.ask("role") == {"active": False}
                assert await other.holds_role(time.time())
            finally:
                await other.close()
        rows = await fetch(dsn, "SELECT host, state, output FROM checkable_state")
        assert [(r["host"], r["state"]) for r in rows] == [("web1", 1)]  # master2's DOWN
        positions = await fetch(dsn, "SELECT endpoint_name, position FROM writer_position "
                                     "ORDER BY 1")
        assert [(r["endpoint_name"], r["position"]) for r in positions] == [
            ("master1", 1), ("master2", 1)]

    run_uvloop(scenario())
