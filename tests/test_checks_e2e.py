"""Scheduled checks end to end: HA split by SDBM, take-over, command_endpoint on a child."""

from __future__ import annotations

import pytest

from router.features.scheduler import sdbm
from tests.nodeutil import ClusterSpec, metrics_text, status_json, wait_until
from tests.pkiutil import make_test_pki

FAST = "reconnect_min = 0.1\nreconnect_max = 0.3\nconnect = 3.0"


def checks_toml(hosts, *, endpoint: str | None = None) -> str:
    out = []
    for host in hosts:
        out += ["[[checks]]", f'host = "{host}"', 'service = "alive"', 'command = "dummy"',
                'interval = 1', 'retry_interval = 1']
        if endpoint:
            out.append(f'command_endpoint = "{endpoint}"')
        out += ["[checks.macros]", "dummy_state = 0", f'dummy_text = "{host} fine"']
    return "\n".join(out) + "\n"


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["m1", "m2", "agent1"])


async def results(service, host=None):
    doc = await status_json(service, "/v1/objects/checkresults" + (f"?host={host}" if host
                                                                     else ""))
    return {r["host"]: r for r in doc["results"]}


def test_ha_pair_splits_checks_and_takes_over(tmp_path, pki, run):
    hosts = [f"web{i:02d}" for i in range(16)]
    spec = ClusterSpec(tmp_path, pki, [("master", ["m1", "m2"], None)],
                       dialled={"m1", "m2"}, timeouts=FAST + "\nha_cold_start = 1.0")

    async def main():
        # Same checks on both members of the zone.
        m1 = await _start_with_checks(spec, "m1", checks_toml(hosts))
        m2 = await _start_with_checks(spec, "m2", checks_toml(hosts))
        try:
            await wait_until(lambda: "m2" in m1.node.connections and "m1" in m2.node.connections,
                             what="HA pair connected")

            async def all_seen(service):
                return len(await results(service)) == len(hosts)
            await wait_until(lambda: all_seen(m1), timeout=40, what="every check at m1")
            await wait_until(lambda: all_seen(m2), timeout=40, what="every check at m2")
            # Wait for a round that ran after both were connected, then compare owners.
            await wait_until(lambda: m1.node.checks.scheduler.scheduled > len(hosts),
                             what="a second round")
            view = await results(m1)
            expected = {h: ("m1", "m2")[sdbm(f"{h}!alive") % 2] for h in hosts}
            recent = {h: r["check_source"] for h, r in view.items()}
            assert recent == expected, (recent, expected)
            assert {h: r["output"] for h, r in view.items()} == {h: f"{h} fine" for h in hosts}
            # m2 goes away: m1 runs everything.
            await m2.stop()

            async def all_m1():
                return all(r["check_source"] == "m1" for r in (await results(m1)).values())
            await wait_until(all_m1, timeout=40, what="m1 took over every check")
            assert m1.node.checks.scheduler.handovers >= 1
            assert master_metrics_ok(await metrics_text(m1))
        finally:
            await m1.stop()
            await m2.stop()

    run(main(), timeout=90)


def test_master_runs_checks_on_a_command_endpoint_child(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["m1"], None),
                                       ("agent1", ["agent1"], "master")],
                       dialled={"agent1"}, timeouts=FAST)

    async def main():
        agent = await spec.start("agent1", node_extra="accept_commands = true")
        master = await _start_with_checks(spec, "m1", checks_toml(["agent1"],
                                                                  endpoint="agent1"))
        try:
            async def answered():
                r = (await results(master, "agent1")).get("agent1")
                return r is not None and r["check_source"] == "agent1" and r
            result = await _wait_value(answered)
            assert result["output"] == "agent1 fine" and result["state"] == 0
            assert master.node.checks.remote_sent >= 1
            stats = master.node.stats["agent1"]
            assert stats.sent.get("event::ExecuteCommand", 0) >= 1
            assert not stats.refused  # the answers were accepted, not refused
        finally:
            await master.stop()
            await agent.stop()

    run(main(), timeout=60)


async def _start_with_checks(spec, name, checks):
    from router.app import RouterService
    from router.config import parse_config

    text = spec.toml(name) + checks
    (spec.directory / name).mkdir(parents=True, exist_ok=True)
    service = RouterService(parse_config(text, str(spec.directory / f"{name}.toml")))
    await service.start()
    return service


async def _wait_value(probe, timeout=20):
    box = {}

    async def check():
        box["v"] = await probe()
        return box["v"]
    await wait_until(check, timeout=timeout, what=probe.__name__)
    return box["v"]


def master_metrics_ok(text: str) -> bool:
    return ("router_checks_scheduled_total " in text
            and 'router_check_schedule_latency_seconds_bucket{le="+Inf"}' in text
            and "router_check_handovers_total " in text
            and "router_checks_executed_total " in text)


def test_builtin_cluster_zone_check_reads_the_node_itself(tmp_path, pki, run):
    """[[checks]] with Icinga's built-in cluster-zone and cluster commands: no plugin,
    the master's own view of its child zone, CRITICAL while the agent is away and OK once
    it is connected, with Icinga's output."""
    from tests.nodeutil import FakePeer

    spec = ClusterSpec(tmp_path, pki, [("master", ["m1"], None),
                                       ("agent1", ["agent1"], "master")])
    checks = ('[[checks]]\nhost = "agent1"\nservice = "cluster-zone"\n'
              'command = "cluster-zone"\ninterval = 0.2\nretry_interval = 0.2\n'
              '[[checks]]\nhost = "m1"\nservice = "cluster"\ncommand = "cluster"\n'
              'interval = 0.2\nretry_interval = 0.2\n')

    async def main():
        master = await _start_with_checks(spec, "m1", checks)
        try:
            async def zone_result():
                view = await results(master, "agent1")
                return view.get("agent1")
            first = await _wait_value(zone_result)
            assert first["output"].startswith("Zone 'agent1' is not connected."), first
            assert first["state"] == 2
            agent = await FakePeer.connect(spec.port("m1"), pki, "agent1", server_name="m1")
            try:
                async def ok_result():
                    result = await zone_result()
                    return result if result and result["state"] == 0 else None
                ok = await _wait_value(ok_result)
                assert ok["output"].startswith("Zone 'agent1' is connected."), ok
                assert any(p.startswith("slave_lag=") for p in ok["performance_data"])
                cluster = (await results(master, "m1"))["m1"]
                assert cluster["output"].startswith("Icinga 2 Cluster"), cluster
            finally:
                await agent.close()
        finally:
            await master.stop()

    run(main(), timeout=60)
