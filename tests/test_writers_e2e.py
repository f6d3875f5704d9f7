"""Result writers end to end: a real master, agents over TLS, real carbon-cache and influxd.

What is checked is what the backends hold (whisper files read with whisper-fetch, InfluxDB's
query API), never what the router says it sent.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.backends import (  # noqa: F401 - fixtures
    CarbonServer,
    InfluxServer,
    carbon_server,
    influx_server,
    require_carbon,
)
from tests.nodeutil import ClusterSpec, FakePeer, check_result, status_json, wait_until
from tests.pkiutil import make_test_pki

AGENTS = [f"agent{i}" for i in range(1, 51)]


@pytest.fixture
def run():
    """The production loop (uvloop) only: the node's behaviour under both loops is covered
    elsewhere; these tests are about the writers' process and the backends."""
    import uvloop

    def runner(coro, timeout: float = 60.0):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(asyncio.wait_for(coro, timeout))
    return runner


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", *AGENTS])


def cluster(tmp_path, pki, agents=AGENTS) -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       *[(a, [a], "master") for a in agents]])


def writers_toml(carbon: CarbonServer | None, influx: InfluxServer | None, *,
                 flush_interval: str = "0.2s", timeout: str = "3s", extra: str = "") -> str:
    out = []
    if carbon is not None:
        out.append(f"""[[writers]]
name = "graphite"
type = "graphite"
port = {carbon.port}
flush_interval = "{flush_interval}"
timeout = "{timeout}"
{extra}""")
    if influx is not None:
        out.append(f"""[[writers]]
name = "influx"
type = "influxdb"
url = "{influx.url}"
database = "icinga2"
flush_interval = "{flush_interval}"
timeout = "{timeout}"
{extra}""")
    return "\n".join(out)


async def connect_agent(spec: ClusterSpec, pki, name: str) -> FakePeer:
    agent = await FakePeer.connect(spec.port("master"), pki, name, server_name="master")
    await wait_until(lambda: agent.messages("icinga::Hello"), what=f"{name} hello")
    return agent


def result(agent: str, i: int, base: float, service: str = "load") -> dict:
    params = check_result(agent, service, f"LOAD {i}", now=base + i * 0.001)
    params["cr"]["command"] = ["/usr/lib/nagios/plugins/check_load", "-w", "5"]
    params["cr"]["performance_data"] = [f"load1={i}.5;5;10;0", "load5=0.1;4;6;0"]
    return params


async def writer_stats(master) -> dict:
    return (await status_json(master))["writers"]


def test_results_reach_graphite_and_influxdb(tmp_path, pki, run, carbon_server,
                                             influx_server):
    spec = cluster(tmp_path, pki, AGENTS[:2])

    async def main():
        master = await spec.start("master", extra=writers_toml(carbon_server, influx_server))
        try:
            a1 = await connect_agent(spec, pki, "agent1")
            a2 = await connect_agent(spec, pki, "agent2")
            base = time.time()
            for i in range(5):
                a1.send("event::CheckResult", result("agent1", i, base))
            p = check_result("agent2", None, "PING OK", now=base)
            p["cr"]["command"] = "/usr/lib/nagios/plugins/check_ping -H agent2"
            p["cr"]["performance_data"] = "rta=0.5ms;100;200;0 'packet loss'=0%;80;100"
            a2.send("event::CheckResult", p)

            async def influx_has_all():
                return await asyncio.to_thread(influx_server.count, "icinga2") == 5 * 2 + 2
            await wait_until(influx_has_all, 20, what="points in InfluxDB")
            rows = await asyncio.to_thread(
                influx_server.query, "icinga2",
                "SELECT value FROM check_load WHERE hostname='agent1' AND metric='load1'")
            values = [v[1] for v in rows[0]["values"]]
            assert values == [0.5, 1.5, 2.5, 3.5, 4.5]     # one point per result, ns apart
            rows = await asyncio.to_thread(
                influx_server.query, "icinga2",
                "SELECT value, unit FROM check_ping WHERE metric='rta'")
            assert rows[0]["values"][0][1:] == [0.0005, "seconds"]

            metric = "icinga2.agent1.services.load.check_load.perfdata.load1.value"
            host_metric = "icinga2.agent2.host.check_ping.perfdata.packet_loss.value"

            async def carbon_has():
                m = await asyncio.to_thread(carbon_server.metrics)
                return metric in m and host_metric in m
            await wait_until(carbon_has, 30, what="whisper files")

            async def last_value():
                pts = await asyncio.to_thread(carbon_server.fetch, metric, base - 5)
                return pts and pts[-1][1] == 4.5
            await wait_until(last_value, 30, what="the last load1 value in whisper")
            async def counted():                # the stats come twice a second
                stats = await writer_stats(master)
                return (stats["influx"]["written"] == 6 and stats["influx"]["active"]
                        and stats["graphite"]["backlog"] == 0)
            await wait_until(counted, 10, what="the writers' statistics")
        finally:
            await master.stop()

    run(main(), 90)


@pytest.mark.slow
def test_fifty_agents_influxdb_outage_exactly_one_point_per_result(tmp_path, pki, run,
                                                                   carbon_server,
                                                                   influx_server):
    """50 agents, 3 000 results; InfluxDB down for several seconds in the middle."""
    spec = cluster(tmp_path, pki)
    per_agent = 60

    async def main():
        master = await spec.start("master", extra=writers_toml(carbon_server, influx_server))
        try:
            agents = await asyncio.gather(*(connect_agent(spec, pki, a) for a in AGENTS))
            base = time.time()

            async def send(round_: range) -> None:
                for i in round_:
                    for name, agent in zip(AGENTS, agents):
                        agent.send("event::CheckResult", result(name, i, base))
                    await asyncio.sleep(0.01)
            await send(range(0, 20))
            await wait_until(lambda: influx_server.count("icinga2", "check_load") > 0, 20,
                             what="first points")
            await asyncio.to_thread(influx_server.stop)        # outage
            await send(range(20, 40))
            await asyncio.sleep(4)
            stats = await writer_stats(master)
            assert stats["influx"]["backlog"] > 0 and not stats["influx"]["connected"]
            assert stats["influx"]["errors"]
            await asyncio.to_thread(influx_server.start)
            await send(range(40, per_agent))

            total = per_agent * len(AGENTS)

            async def all_points():
                n = await asyncio.to_thread(influx_server.count, "icinga2", "check_load",
                                            "metric='load1'")
                return n >= total
            await wait_until(all_points, 90, interval=0.5, what="every point in InfluxDB")
            await asyncio.sleep(1.5)          # anything doubled would show up by now
            rows = await asyncio.to_thread(
                influx_server.query, "icinga2",
                "SELECT count(value) FROM check_load WHERE metric='load1' GROUP BY hostname")
            counts = {s["tags"]["hostname"]: s["values"][0][1] for s in rows}
            assert counts == {a: per_agent for a in AGENTS}

            async def last_in_graphite():
                for name in AGENTS:
                    metric = f"icinga2.{name}.services.load.check_load.perfdata.load1.value"
                    pts = await asyncio.to_thread(carbon_server.fetch, metric, base - 5)
                    if not pts or pts[-1][1] != per_agent - 1 + 0.5:
                        return False
                return True
            await wait_until(last_in_graphite, 60, interval=0.5,
                             what="every agent's last result in whisper")
            async def drained():
                w = (await writer_stats(master))["influx"]
                return w["backlog"] == 0 and w["active"] and w["written"] == total
            await wait_until(drained, 10, what="the influx statistics")
            for agent in agents:
                await agent.close()
        finally:
            await master.stop()

    run(main(), 240)


def test_unreachable_backend_at_start_is_retried_and_counted(tmp_path, pki, run):
    require_carbon()
    carbon = CarbonServer(tmp_path / "carbon")        # configured, not started yet
    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        master = await spec.start("master", extra=writers_toml(carbon, None))
        try:
            agent = await connect_agent(spec, pki, "agent1")
            base = time.time()
            for i in range(3):
                agent.send("event::CheckResult", result("agent1", i, base))

            async def retried():
                w = (await writer_stats(master))["graphite"]
                return w["errors"].get("connect", 0) >= 2 and w["backlog"] == 3
            await wait_until(retried, 20, what="connect errors counted, results queued")
            status = await status_json(master)
            assert status["totals"]["check_results"] == 3     # routing went on
            w = status["writers"]["graphite"]
            assert not w["connected"] and "carbon" in w["last_error"]
            await asyncio.to_thread(carbon.start)
            metric = "icinga2.agent1.services.load.check_load.perfdata.load1.value"

            async def arrived():
                pts = await asyncio.to_thread(carbon.fetch, metric, base - 5)
                return pts and pts[-1][1] == 2.5
            await wait_until(arrived, 60, interval=0.3, what="the queued results in carbon")
            async def drained():
                w = (await writer_stats(master))["graphite"]
                return w["backlog"] == 0 and w["written"] == 3
            await wait_until(drained, 10, what="the graphite statistics")
        finally:
            await master.stop()
            carbon.stop()

    run(main(), 120)


def test_backend_that_never_answers_times_out(tmp_path, pki, run):
    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        held: list[asyncio.StreamWriter] = []

        async def silent(reader, writer):     # accepts, reads, never answers
            held.append(writer)
            while await reader.read(65536):
                pass
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        extra = f"""[[writers]]
name = "influx"
type = "influxdb"
url = "http://127.0.0.1:{port}"
timeout = "0.5s"
flush_interval = "0.1s"
"""
        master = await spec.start("master", extra=extra)
        try:
            agent = await connect_agent(spec, pki, "agent1")
            base = time.time()
            for i in range(5):
                agent.send("event::CheckResult", result("agent1", i, base))

            async def timed_out():
                w = (await writer_stats(master))["influx"]
                return w["errors"].get("timeout", 0) >= 2
            await wait_until(timed_out, 20, what="timeouts counted")
            status = await status_json(master)
            assert status["totals"]["check_results"] == 5
            assert status["writers"]["influx"]["backlog"] == 5
            from tests.nodeutil import metrics_text
            text = await metrics_text(master)
            assert 'router_writer_errors_total{reason="timeout",writer="influx"}' in text
            assert 'router_writer_backlog{writer="influx"} 5.0' in text
            assert 'router_writer_active{writer="influx"} 0.0' in text
        finally:
            await master.stop()
            server.close()
            for w in held:
                w.close()

    run(main(), 90)


def test_names_with_spaces_dots_slashes_and_bad_perfdata(tmp_path, pki, run, carbon_server,
                                                         influx_server):
    spec = cluster(tmp_path, pki, AGENTS[:1])
    extra = writers_toml(carbon_server, influx_server) + \
        '\n[objects.hosts]\n"web 01.example/a" = "agent1"\n'

    async def main():
        master = await spec.start("master", extra=extra)
        try:
            agent = await connect_agent(spec, pki, "agent1")
            now = time.time()
            p = check_result("web 01.example/a", "disk /var", "DISK OK", now=now)
            p["cr"]["command"] = ["/usr/lib/nagios/plugins/check_disk", "-p", "/var"]
            p["cr"]["performance_data"] = ["'used space'=5GB;8;9;0;10", "broken=1,5",
                                           "nothing", "x=U"]
            agent.send("event::CheckResult", p)
            metric = ("icinga2.web_01_example_a.services.disk__var.check_disk.perfdata."
                      "used_space.value")

            async def in_carbon():
                pts = await asyncio.to_thread(carbon_server.fetch, metric, now - 5)
                return pts and pts[-1][1] == 5e9
            await wait_until(in_carbon, 30, interval=0.3, what="escaped metric in carbon")

            async def in_influx():
                rows = await asyncio.to_thread(
                    influx_server.query, "icinga2",
                    "SELECT value, hostname, service, metric FROM check_disk")
                return rows and rows[0]["values"][0][1:] == [
                    5e9, "web 01.example/a", "disk /var", "used space"]
            await wait_until(in_influx, 30, interval=0.3, what="escaped point in InfluxDB")
            async def counted():
                stats = await writer_stats(master)
                return all(stats[n]["errors"].get("perfdata") == 3 and stats[n]["written"] == 1
                           for n in ("graphite", "influx"))
            await wait_until(counted, 10, what="3 invalid perfdata counted per writer")
        finally:
            await master.stop()

    run(main(), 90)


def test_reload_adds_changes_and_removes_writers(tmp_path, pki, run, carbon_server):
    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        master = await spec.start("master")
        try:
            assert (await status_json(master))["writers"] is None
            spec.config("master", extra=writers_toml(carbon_server, None))
            record = (await master.reload("test")).as_json()
            assert record["result"] == "ok", record
            assert record["changes"]["writers_added"] == ["graphite"]
            agent = await connect_agent(spec, pki, "agent1")
            base = time.time()
            agent.send("event::CheckResult", result("agent1", 7, base))
            metric = "icinga2.agent1.services.load.check_load.perfdata.load1.value"

            async def arrived(value):
                pts = await asyncio.to_thread(carbon_server.fetch, metric, base - 5)
                return pts and pts[-1][1] == value
            await wait_until(lambda: arrived(7.5), 30, interval=0.3, what="after adding")
            # a changed template applies without a restart
            spec.config("master", extra=writers_toml(
                carbon_server, None,
                extra='service_name_template = "renamed.$host.name$.$service.name$"'))
            record = (await master.reload("test")).as_json()
            assert record["changes"]["writers_changed"] == ["graphite"], record
            agent.send("event::CheckResult", result("agent1", 8, base + 1))

            async def renamed():
                pts = await asyncio.to_thread(
                    carbon_server.fetch, "renamed.agent1.load.perfdata.load1.value", base - 5)
                return bool(pts)
            await wait_until(renamed, 30, interval=0.3, what="the renamed metric")
            spec.config("master")
            record = (await master.reload("test")).as_json()
            assert record["changes"]["writers_removed"] == ["graphite"], record

            async def gone():
                return (await status_json(master))["writers"] == {}
            await wait_until(gone, 10, what="writer removed from the status")
        finally:
            await master.stop()

    run(main(), 120)


def test_carbon_that_never_reads_times_out_and_routing_goes_on(tmp_path, pki, run):
    """A line receiver that accepts and never reads: once the socket buffers are full the
    write cannot finish; it is bounded by ``timeout``, counted, and retried."""
    import socket as socket_mod

    spec = cluster(tmp_path, pki, AGENTS[:1])

    async def main():
        listener = socket_mod.socket()
        listener.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        accepted: list[socket_mod.socket] = []

        async def accept_forever():
            loop = asyncio.get_running_loop()
            while True:
                conn, _ = await loop.sock_accept(listener)
                accepted.append(conn)              # held open, never read
        acceptor = asyncio.create_task(accept_forever())
        extra = f"""[[writers]]
name = "graphite"
type = "graphite"
port = {port}
timeout = "0.5s"
flush_interval = "0.1s"
flush_threshold = 20
"""
        master = await spec.start("master", extra=extra)
        try:
            agent = await connect_agent(spec, pki, "agent1")
            base = time.time()
            perfdata = [f"metric_number_{k}_with_a_long_label={k}.5;1;2;0;100"
                        for k in range(1000)]
            for i in range(120):
                p = result("agent1", i, base)
                p["cr"]["performance_data"] = perfdata
                agent.send("event::CheckResult", p)

            async def timed_out():
                w = (await writer_stats(master))["graphite"]
                return w["errors"].get("timeout", 0) >= 2 and w["backlog"] > 0
            await wait_until(timed_out, 60, what="write timeouts counted")
            status = await status_json(master)
            assert status["totals"]["check_results"] == 120       # routing went on
            assert len(accepted) >= 2                             # it reconnected
        finally:
            await master.stop()
            acceptor.cancel()
            for conn in accepted:
                conn.close()
            listener.close()

    run(main(), 120)
