"""An API execution relayed through an HA satellite zone whose member that got it from the
parent is not the zone's routing master: the answer comes back through the HA peer and is
refused ``wrong_endpoint``, so the parent never gets its event::ExecutedCommand."""
from __future__ import annotations

import time

import pytest

from tests.conftest import run  # noqa: F401  (the project's both-loops fixture)
from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "sat2", "agent1"])


def test_answer_through_ha_peer_reaches_the_requester(tmp_path, pki, run):
    # sat2 is listed first: a parent picks it for the zone, but sat1 (smaller name) is
    # the zone's routing master, so sat2 hands the command to sat1, which sends it down.
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat2", "sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       dialled={"sat1"})

    async def main():
        sat1 = await spec.start("sat1")
        sat2 = await spec.start("sat2")
        peers = []
        try:
            await wait_until(lambda: "sat1" in sat2.node.connected_names
                             and "sat2" in sat1.node.connected_names, what="HA session")
            master = await FakePeer.connect(spec.port("sat2"), pki, "master",
                                            server_name="sat2")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            peers += [master, agent]
            await wait_until(lambda: "master" in sat2.node.connected_names
                             and "agent1" in sat1.node.connected_names, what="sessions")
            execution = "7d0c2b1a-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
            master.send("event::ExecuteCommand", {
                "command": "hostalive", "command_type": "check_command",
                "deadline": time.time() + 60, "endpoint": "agent1", "host": "agent1",
                "macros": {}, "source": execution})
            await wait_until(lambda: agent.messages("event::ExecuteCommand"),
                             what="the command at agent1")
            # The agent answers the endpoint that sent it the command (Icinga's
            # SyncSendMessage to its source endpoint): sat1.
            agent.send("event::ExecutedCommand", {
                "execution": execution, "host": "agent1", "exit": 0,
                "output": "PING OK", "start": time.time() - 1, "end": time.time()})
            try:
                await wait_until(lambda: master.messages("event::ExecutedCommand"),
                                 timeout=5, what="the answer at the master")
            except AssertionError:
                refused = sat2.node.stats["sat1"].refused.get(
                    ("event::ExecutedCommand", "wrong_endpoint"))
                raise AssertionError(
                    "the agent's event::ExecutedCommand never reached the master: sat2 "
                    f"refused it from its HA peer sat1 as wrong_endpoint ({refused} time(s)); "
                    "the execution it relayed via sat1 can only be answered through sat1")
            [got] = master.messages("event::ExecutedCommand")
            assert got["params"]["output"] == "PING OK"
        finally:
            for peer in peers:
                await peer.close()
            await sat2.stop()
            await sat1.stop()

    run(main())
