"""Two ``router serve`` masters of one zone, both with the PostgreSQL writer on one database
(issue 19, "HA"): exactly one writes; kill -9 of the active one (node and writers' process):
the other takes over within failover_timeout plus one heartbeat, and the results it receives
afterwards reach the database.

Split brain: the masters are not connected, the database alone decides. Connected: Icinga's
object authority for the writer's name picks the writer, whichever node claimed first.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest

from router.features.scheduler import sdbm
from tests.backends_postgresql import PostgresServer, postgresql_server
from tests.nodeutil import (
    ClusterSpec,
    FakePeer,
    check_result,
    free_port,
    http_get,
    wait_until,
)
from tests.pkiutil import make_test_pki
from tests.test_writer_postgresql import fetch
from tests.test_writers_kill9 import RouterProcess

__all__ = ["postgresql_server"]  # the fixture, imported to be found by pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MASTERS = ("master1", "master2")
FAILOVER = 2.0
HEARTBEAT = FAILOVER / 4
#: Two router processes and their writers' children on a shared 2-core machine.
SLACK = 3.0 * float(os.environ.get("ROUTER_TEST_TIME_SCALE", "1"))


def _masters(tmp_path: Path, dsn: str, connected: bool
             ) -> tuple[ClusterSpec, dict[str, RouterProcess]]:
    pki = make_test_pki(tmp_path / "pki", [*MASTERS, "agent1"])
    # Split brain: nobody has an address for anybody, the masters never connect.
    # Connected: master2 dials master1.
    spec = ClusterSpec(tmp_path, pki, [("master", list(MASTERS), None),
                                       ("agent1", ["agent1"], "master")],
                       dialled={"master1"} if connected else set())
    nodes = {}
    for name in MASTERS:
        status_port = free_port()
        text = spec.toml(name, extra=f"""[[writers]]
name = "pg"
type = "postgresql"
dsn = "{dsn}"
failover_timeout = "{FAILOVER:g}s"
flush_interval = "0.1s"
timeout = "2s"
""").replace('status_listen = "127.0.0.1:0"', f'status_listen = "127.0.0.1:{status_port}"')
        text = text.replace('log_level = "debug"', 'log_level = "info"')
        (tmp_path / name).mkdir(exist_ok=True)
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        nodes[name] = RouterProcess(config, status_port, tmp_path / f"{name}.log")
    return spec, nodes


def _active(nodes: dict[str, RouterProcess]) -> list[str]:
    return [name for name, node in nodes.items()
            if node.proc is not None and node.proc.poll() is None
            and node.writers()["pg"].get("active")]


async def _send(spec: ClusterSpec, master: str, output: str, state: int) -> None:
    agent = await FakePeer.connect(spec.port(master), spec.pki, "agent1", server_name=master)
    try:
        await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
        agent.send("event::CheckResult", check_result("agent1", "load", output, state=state))
        await asyncio.sleep(0.3)
    finally:
        await agent.close()


@pytest.mark.parametrize("connected", [False, True], ids=["split_brain", "connected"])
def test_two_masters_one_writer_then_failover(
        tmp_path: Path, postgresql_server: PostgresServer, connected: bool) -> None:
    dsn = postgresql_server.create_database(f"e2e_ha_{int(connected)}")
    spec, nodes = _masters(tmp_path, dsn, connected)
    authoritative = sorted(MASTERS)[sdbm("pg") % len(MASTERS)]
    try:
        for node in nodes.values():
            node.start()
        deadline = time.monotonic() + 20
        while (_active(nodes) != [authoritative]) if connected else len(_active(nodes)) != 1:
            assert time.monotonic() < deadline, {n: p.writers() for n, p in nodes.items()}
            time.sleep(0.1)
        if connected:
            code, body = http_get(nodes["master1"].status_port,
                                  "/v1/status?sections=endpoints&endpoint=master2")
            assert code == 200, body
            [peer] = orjson.loads(body)["endpoints"]
            assert peer["name"] == "master2" and peer["connected"], peer
        # Sampled for longer than the failover timeout: always exactly one.
        for _ in range(int(FAILOVER * 2 / 0.1)):
            assert len(_active(nodes)) == 1, {n: p.writers()["pg"] for n, p in nodes.items()}
            time.sleep(0.1)
        active = _active(nodes)[0]
        survivor = next(n for n in MASTERS if n != active)
        rows = asyncio.run(fetch(dsn, "SELECT endpoint_name FROM writer_instance"))
        assert [r["endpoint_name"] for r in rows] == [active]

        # Both masters receive the agent's result; only the active one writes it.
        for name in MASTERS:
            asyncio.run(_send(spec, name, f"first via {name}", 0))
        deadline = time.monotonic() + 20
        while not asyncio.run(fetch(dsn, "SELECT 1 FROM checkable_state")):
            assert time.monotonic() < deadline, nodes[active].writers()
            time.sleep(0.1)

        nodes[active].kill9()
        killed = time.monotonic()
        while _active(nodes) != [survivor]:
            assert time.monotonic() - killed < FAILOVER + HEARTBEAT + SLACK, \
                nodes[survivor].writers()
            time.sleep(0.05)
        rows = asyncio.run(fetch(dsn, "SELECT endpoint_name FROM writer_instance"))
        assert [r["endpoint_name"] for r in rows] == [survivor]

        asyncio.run(_send(spec, survivor, "after the failover", 2))
        deadline = time.monotonic() + 20
        while True:
            rows = asyncio.run(fetch(dsn, "SELECT state, output FROM checkable_state"))
            if rows and rows[0]["output"] == "after the failover":
                break
            assert time.monotonic() < deadline, (rows, nodes[survivor].writers())
            time.sleep(0.1)
        assert rows[0]["state"] == 2
        positions = asyncio.run(fetch(dsn, "SELECT endpoint_name FROM writer_position "
                                           "ORDER BY 1"))
        assert [r["endpoint_name"] for r in positions] == sorted(MASTERS)
    finally:
        for node in nodes.values():
            node.stop()
