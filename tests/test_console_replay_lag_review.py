"""The console's replay lag of a zone whose endpoint never confirmed a position is the
age of the Unix epoch.

router/node/console.py replay_figures(): ``behind = newest - positions.get(endpoint,
0.0)``. An endpoint that never sent log::SetLogPosition for what we logged (a satellite
installed before its master is up, a new agent configured before it is installed, a
parent that has been away since this node's first start) has no position, so its zone's
``replay_lag`` is ``newest_ts - 0``: about 1.7e9 s. The zones table shows "≈20 000 d",
the banner a permanent "zone master lags 20000 days" warning, and the endpoint row the
same. The log lag beside it (report.zone_log_lag) skips endpoints without a position for
this very reason; the replay lag should be bounded by what the log holds (newest minus
oldest record of the zone, i.e. the endpoint has nothing of it).
"""
from __future__ import annotations

import time

from router.node.console import Caches, console_document
from tests.conftest import run  # noqa: F401  (fixture: both event loops)
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

CR = "event::CheckResult"


def test_replay_lag_of_a_parent_that_never_confirmed_is_not_since_1970(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")])

    async def main():
        sat = await spec.start("sat1")          # its master is not there (yet)
        started = time.time()
        try:
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
            for i in range(20):
                agent.send(CR, check_result("agent1", f"s{i}", f"OK {i}"), ts=time.time())
            await wait_until(lambda: sat.node.replay.persisted >= 20, timeout=30,
                             what="results kept for the absent master")
            doc = console_document(sat.node, caches=Caches())
            zone = {z["name"]: z for z in doc["zones"]}["master"]
            cols = {n: i for i, n in enumerate(doc["endpoint_columns"])}
            row = [r for r in doc["endpoints"] if r[cols["name"]] == "master"][0]
            lagging = [p["text"] for p in doc["problems"]["items"]
                       if p["kind"] == "zone_lagging"]
            held_for = time.time() - started
            assert zone["replay_records"] and zone["replay_lag"] <= held_for + 5, (
                f"zone 'master' holds {zone['replay_records']} records logged in the last "
                f"{held_for:.0f} s, but the console says its replay lag is "
                f"{zone['replay_lag']:.0f} s ({zone['replay_lag'] / 86400:.0f} days: "
                f"newest record minus position 0 of an endpoint that never confirmed one); "
                f"endpoint row replay_lag={row[cols['replay_lag']]}, banner: {lagging}")
            await agent.close()
        finally:
            await sat.stop()

    run(main(), timeout=90)
