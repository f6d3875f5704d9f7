"""While the node replays its log to an endpoint that came back, /v1/status contradicts
itself: endpoints[] says the endpoint is connected (an established connection exists,
report.endpoints: ``conn is not None``), zones[] says its zone is not (report.zones reads
``node.connected_names``, which the session joins only when the replay is done,
sessions.py). docs/status-api.md defines both the same way ("an established connection
exists" / "at least one endpoint of the zone has an established connection"), and
Icinga's cluster-zone check counts a syncing endpoint as connected (Endpoint::GetConnected
is "has a client"; CalculateZoneLag reports its lag). So during every replay -- minutes
after a long outage -- `router check cluster-zone` pages CRITICAL "Zone 'master' is not
connected" for a connected zone, while `router check cluster` says OK."""
from __future__ import annotations

import asyncio
import time

from tests.conftest import run  # noqa: F401  (fixture: both event loops)
from tests.nodeutil import ClusterSpec, FakePeer, check_result, status_json, wait_until
from tests.pkiutil import make_test_pki
from router.ops import health

CR = "event::CheckResult"
FAST = "reconnect_min = 0.2\nreconnect_max = 0.5"


class SlowReader(FakePeer):
    """A parent that reads nothing until ``gate`` is set (a slow link, a busy master)."""

    async def _read_loop(self) -> None:
        self.gate = getattr(self, "gate", None) or asyncio.Event()
        await self.gate.wait()
        await super()._read_loop()


def test_zone_of_an_endpoint_being_replayed_to_is_connected(tmp_path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       timeouts=FAST,
                       limits="send_queue_high_messages = 200\nsend_queue_low_messages = 50")

    async def main():
        sat = await spec.start("sat1")
        try:
            # The parent was here (its last message stamped 300 s ago), then went away.
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            await wait_until(lambda: "master" in sat.node.connected_names, what="parent")
            master.send("log::SetLogPosition", {"log_position": 0}, ts=time.time() - 300)
            await wait_until(lambda: sat.node.stats["master"].remote_log_position > 0,
                             what="the parent's ts")
            await master.close()
            await wait_until(lambda: "master" not in sat.node.connected_names,
                             what="parent gone")
            # Meanwhile a backlog for the parent's zone goes to the replay log.
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
            backlog = 4000
            for i in range(backlog):
                agent.send(CR, check_result("agent1", f"s{i % 7}", "x" * 4000 + str(i)))
            await wait_until(lambda: sat.node.replay.persisted >= backlog, timeout=30,
                             what="results in the replay log")
            # The parent comes back and reads slowly: the replay runs for a while.
            master = await SlowReader.connect(spec.port("sat1"), pki, "master",
                                              server_name="sat1")
            await wait_until(lambda: sat.node.replay.replaying.get("master", 0) > 0,
                             what="the replay running")
            status = await status_json(sat)
            assert "master" in sat.node.replay.replaying, "the replay already finished"
            endpoint = {e["name"]: e for e in status["endpoints"]}["master"]
            zone = {z["name"]: z for z in status["zones"]}["master"]
            assert endpoint["connected"] is True
            outcome = health.cluster_zone(status, "master", lag_warning=60, lag_critical=600)
            cluster = health.cluster(status)
            from router.node import console
            doc = console.console_document(sat.node, caches=console.Caches())
            row = {z["name"]: z for z in doc["zones"]}["master"]
            assert (row["health"], row["up"]) == ("all", 1) and row["log_lag"] > 200, (
                f"the console shows zone 'master' as {row['health']} ({row['up']} up, lag "
                f"{row['log_lag']}) while the log is replayed to its connected endpoint")
            assert zone["connected"] is True, (
                f"endpoints[] says 'master' is connected, zones[] says zone 'master' is not "
                f"(replay running, {sat.node.replay.replaying['master']} of {backlog} sent); "
                f"cluster-zone: {outcome.state_name} {outcome.output!r}; cluster: "
                f"{cluster.state_name} {cluster.output.splitlines()[0]!r}")
            assert outcome.state == health.WARNING and outcome.output.startswith(
                "Zone 'master' is connected. Log lag: 5 minutes"), (
                f"cluster-zone during the replay: {outcome.state_name} {outcome.output!r}")
            master.gate.set()
            await agent.close()
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=90)
