"""The console pages for zones the node never connects to.

A master whose configuration also lists the agent zones below a satellite (relation
   ``other``: "known, not adjacent: we never connect to it", docs/status-api.md) gets a
   critical "zone agentN is disconnected" problem for every such agent although the
   master is connected to everything it ever connects to; `router check cluster`
   deliberately ignores them (router/ops/health.py _COUNTED_RELATIONS, a review,
   docs/operations.md:99). At 5 000 agents below satellites the banner is permanently
   red with "… and 4 980 more".
"""
from __future__ import annotations

from router.node.console import Caches, console_document
from router.ops import health
from tests.conftest import run  # noqa: F401  (fixture: both event loops)
from tests.nodeutil import ClusterSpec, status_json, wait_until
from tests.pkiutil import make_test_pki

FAST = "reconnect_min = 0.2\nreconnect_max = 0.5"


def test_console_does_not_page_for_agents_below_a_satellite(tmp_path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1", "agent2"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat"),
                                       ("agent2", ["agent2"], "sat")],
                       dialled={"master", "sat1"}, timeouts=FAST)

    async def main():
        master = await spec.start("master")
        sat = await spec.start("sat1")
        agents = [await spec.start(a, listen=False) for a in ("agent1", "agent2")]
        try:
            await wait_until(lambda: "sat1" in master.node.connections, what="sat1 up")
            await wait_until(lambda: {"agent1", "agent2"} <= set(sat.node.connections),
                             what="agents at the satellite")
            status = await status_json(master)
            outcome = health.cluster(status)
            assert outcome.state == health.OK, outcome.output   # Icinga's view: all fine
            doc = console_document(master.node, caches=Caches())
            zones = {z["name"]: z for z in doc["zones"]}
            assert zones["agent1"]["relation"] == "other"
            problems = [p["text"] for p in doc["problems"]["items"]]
            assert not problems, (
                f"the master is connected to every endpoint it ever connects to "
                f"(`router check cluster`: {outcome.output.splitlines()[0]!r}), yet the "
                f"console's banner lists {problems} (counts {doc['problems']['counts']}): "
                f"agent zones below the satellite (relation 'other', never dialled by the "
                f"master) are shown as disconnected")
        finally:
            for a in agents:
                await a.stop()
            await sat.stop()
            await master.stop()

    run(main(), timeout=90)
