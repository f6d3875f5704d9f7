"""Icinga's cluster and cluster-zone checks (router.ops.health, router check)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from click.testing import CliRunner

from router.cli import main as cli_main
from router.ops import health
from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki


@pytest.mark.parametrize("seconds, text", [
    (0, "less than 1 millisecond"),
    (0.0004, "less than 1 millisecond"),
    (0.001, "1 millisecond"),
    (0.25, "250 milliseconds"),
    (1, "1 second"),
    (1.9, "1 second"),
    (65, "1 minute and 5 seconds"),
    (120, "2 minutes"),
    (3600, "1 hour"),
    (3661, "1 hour, 1 minute and 1 second"),
    (2 * 86400 + 7200 + 3, "2 days, 2 hours and 3 seconds"),
])
def test_format_duration_like_icinga(seconds, text) -> None:
    assert health.format_duration(seconds) == text


def test_numbers_and_perfdata_like_icinga() -> None:
    assert health.icinga_number(3.0) == "3"
    assert health.icinga_number(0.5) == "0.500000"
    assert health.Perf("slave_lag", 0.0, "s", 0.0, 0.0).format() == "slave_lag=0s;0;0"
    assert health.Perf("a b", 1.25).format() == "'a b'=1.250000"


def doc(connected: bool, *, lag: float = 0.0, local: str = "master",
        members=("agent1",)) -> dict:
    return {
        "node": {"name": local},
        "zones": [{"name": "master", "connected": False, "endpoints": [local],
                   "log_lag": 0.0},
                  {"name": "agent1", "connected": connected, "endpoints": list(members),
                   "log_lag": lag}],
        "endpoints": [
            {"name": local, "relation": "self", "connected": True},
            {"name": "agent1", "relation": "child", "connected": connected,
             "last_message_sent": 1700000000.0, "last_message_received": 1700000001.5,
             "messages_sent_per_second": 2.0, "messages_received_per_second": 0.5}],
    }


def test_cluster_zone_connected_not_connected_and_thresholds() -> None:
    ok = health.cluster_zone(doc(True), "agent1")
    assert (ok.state, ok.output) == (0, "Zone 'agent1' is connected. Log lag: less than "
                                        "1 millisecond")
    assert ok.plugin_text().split(" | ")[1].split() == [
        "slave_lag=0s;0;0", "last_messages_sent=1700000000",
        "last_messages_received=1700000001.500000",
        "sum_messages_sent_per_second=2", "sum_messages_received_per_second=0.500000",
        "sum_bytes_sent_per_second=0", "sum_bytes_received_per_second=0"]
    down = health.cluster_zone(doc(False, lag=125), "agent1")
    assert (down.state, down.output) == (2, "Zone 'agent1' is not connected. Log lag: "
                                            "2 minutes and 5 seconds")
    warn = health.cluster_zone(doc(True, lag=90), "agent1", lag_warning=60, lag_critical=300)
    assert warn.state == 1 and warn.output.endswith(
        "Log lag: 1 minute and 30 seconds greater than warning threshold: 1 minute")
    crit = health.cluster_zone(doc(True, lag=400), "agent1", lag_warning=60,
                               lag_critical=300)
    assert crit.state == 2 and crit.output.endswith("greater than critical threshold: "
                                                    "5 minutes")
    assert "slave_lag=400s;60;300" in crit.plugin_text()
    # the local zone holds only us: connected
    assert health.cluster_zone(doc(False), "master").state == 0
    missing = health.cluster_zone(doc(True), "nope")
    assert (missing.state, missing.output) == (3, "Zone 'nope' does not exist.")


def test_cluster_check() -> None:
    ok = health.cluster(doc(True))
    assert ok.state == 0
    assert ok.plugin_text().startswith("Icinga 2 Cluster OK: 1 endpoints are connected. | ")
    assert ok.plugin_text().endswith("\n(agent1)")
    bad = health.cluster(doc(False))
    assert bad.state == 2 and bad.output == ("Icinga 2 Cluster Problem: 1 endpoints are not "
                                             "connected.\n(agent1)")


def test_unreachable_node_is_unknown() -> None:
    result = CliRunner().invoke(cli_main, ["check", "cluster-zone", "--zone", "x",
                                           "--url", "http://127.0.0.1:1", "--timeout", "2"])
    assert result.exit_code == 3
    assert result.output.startswith("UNKNOWN: cannot read the node's status: ")
    result = CliRunner().invoke(cli_main, ["check", "cluster", "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 3


def test_checks_against_a_running_node(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1", "agent2", "agent3"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master"),
                                       ("agent3", ["agent3"], "master")])

    def check(*args):
        return CliRunner().invoke(cli_main, ["check", *args, "--url", url])

    async def main():
        nonlocal url
        master = await spec.start("master")
        url = f"http://127.0.0.1:{master.status_port}"
        try:
            connected = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                               server_name="master")
            lagging = await FakePeer.connect(spec.port("master"), pki, "agent3",
                                             server_name="master")
            await wait_until(lambda: {"agent1", "agent3"} <= master.node.connected_names,
                             what="agents")
            lagging.send("log::SetLogPosition", {"log_position": 0}, ts=time.time() - 125)
            await wait_until(lambda: master.node.stats["agent3"].remote_log_position > 0,
                             what="agent3's ts")
            await lagging.close()
            await wait_until(lambda: "agent3" not in master.node.connected_names,
                             what="agent3 gone")
            result = await asyncio.to_thread(check, "cluster-zone", "--zone", "agent1")
            assert result.exit_code == 0, result.output
            assert result.output.startswith(
                "Zone 'agent1' is connected. Log lag: less than 1 millisecond | slave_lag=0s;0;0 ")
            # agent1 sent its Hello and the node its Hello and heartbeats: byte rates move
            perf = dict(item.split("=", 1) for item in result.output.split("|", 1)[1].split())
            assert float(perf["sum_bytes_received_per_second"]) > 0, result.output
            assert float(perf["sum_bytes_sent_per_second"]) > 0, result.output
            result = await asyncio.to_thread(check, "cluster-zone", "--zone", "agent2")
            assert result.exit_code == 2
            assert result.output.startswith("Zone 'agent2' is not connected. Log lag: less "
                                            "than 1 millisecond | ")
            result = await asyncio.to_thread(check, "cluster-zone", "--zone", "agent3")
            assert result.exit_code == 2
            assert re.match(r"Zone 'agent3' is not connected\. Log lag: 2 minutes and "
                            r"[5-9] seconds \| slave_lag=12[5-9]\.\d{6}s;0;0 ",
                            result.output), result.output
            result = await asyncio.to_thread(check, "cluster")
            assert result.exit_code == 2
            assert result.output.startswith("Icinga 2 Cluster Problem: 2 endpoints are not "
                                            "connected. | ")
            assert result.output.rstrip().endswith("(agent2, agent3)")
            await connected.close()
        finally:
            await master.stop()

    url = ""
    run(main())


def test_builtin_commands_take_icinga_macros() -> None:
    status = lambda: doc(True, lag=90)  # noqa: E731
    out = health.builtin_command("cluster-zone", {"cluster_zone": "agent1",
                                                  "cluster_lag_warning": "60"}, status)
    assert out is not None and out.state == 1
    out = health.builtin_command("cluster-zone", {"host.name": "agent1"}, status)
    assert out is not None and out.state == 0 and "Zone 'agent1'" in out.output
    out = health.builtin_command("cluster", {}, status)
    assert out is not None and out.state == 0
    assert health.builtin_command("ping4", {}, status) is None
    assert health.builtin_command("cluster-zone", {}, status).state == 3
