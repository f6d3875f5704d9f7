"""Several of our nodes over TLS on loopback: chains, HA pairs, outbound-only nodes."""

from __future__ import annotations

import asyncio

import pytest

from tests.nodeutil import ClusterSpec, FakePeer, check_result, status_json, wait_until
from tests.pkiutil import make_test_pki

FAST = "reconnect_min = 0.1\nreconnect_max = 0.5\nconnect = 3.0"


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "master2", "sat1", "sat2", "agent1",
                                            "leaf"])


def received(service, endpoint: str, method: str = "event::CheckResult") -> int:
    stats = service.node.stats.get(endpoint)
    return stats.received.get(method, 0) if stats else 0


def test_chain_with_ha_satellites_delivers_exactly_once(tmp_path, pki, run):
    """leaf (scripted) -> agent1 -> {sat1, sat2} (HA) -> master, all but the leaf ours."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("satellite", ["sat1", "sat2"], "master"),
                                       ("agent1", ["agent1"], "satellite"),
                                       ("leaf", ["leaf"], "agent1")],
                       dialled={"master", "sat1", "sat2", "agent1"}, timeouts=FAST)

    async def main():
        nodes = {name: await spec.start(name) for name in ("master", "sat1", "sat2", "agent1")}
        master, sat1, sat2, agent = (nodes[n] for n in ("master", "sat1", "sat2", "agent1"))
        try:
            def meshed():
                return (set(master.node.connections) == {"sat1", "sat2"}
                        and {"master", "sat2", "agent1"} <= set(sat1.node.connections)
                        and {"master", "sat1", "agent1"} <= set(sat2.node.connections)
                        and set(agent.node.connections) == {"sat1", "sat2"})
            await wait_until(meshed, timeout=20, what="all links up (simultaneous dials settled)")
            for service in nodes.values():  # one session per endpoint, never two
                names = [c.endpoint for c in service.node.all_connections if c.endpoint]
                assert len(names) == len(set(names))

            leaf = await FakePeer.connect(spec.port("agent1"), pki, "leaf",
                                          server_name="agent1")
            count = 40
            for i in range(count):
                leaf.send("event::CheckResult", check_result("leaf", f"svc{i}", f"result {i}"))
            await wait_until(lambda: master.node.check_results_received >= count,
                             what="results at the master")
            await asyncio.sleep(0.5)  # anything duplicated would arrive by now
            assert master.node.check_results_received == count
            doc = await status_json(master, "/v1/objects/checkresults?host=leaf")
            assert sorted(r["output"] for r in doc["results"]) == \
                sorted(f"result {i}" for i in range(count))
            # The agent sent each result to one satellite; that satellite relayed it to the
            # master and to its HA peer; the peer kept it (it is not the routing master).
            assert received(sat1, "agent1") + received(sat2, "agent1") == count
            assert received(sat1, "sat2") + received(sat2, "sat1") == count
            assert received(master, "sat1") + received(master, "sat2") == count
            assert not leaf.messages("event::CheckResult")  # never back to the origin

            # Fail over: sat1 goes away, results keep arriving exactly once through sat2.
            await sat1.stop()
            await wait_until(lambda: set(agent.node.connections) == {"sat2", "leaf"}
                             and set(master.node.connections) == {"sat2"},
                             what="sat1 gone everywhere")
            for i in range(count, 2 * count):
                leaf.send("event::CheckResult", check_result("leaf", f"svc{i}", f"result {i}"))
            await wait_until(lambda: master.node.check_results_received >= 2 * count,
                             what="results after failover")
            await asyncio.sleep(0.5)
            assert master.node.check_results_received == 2 * count
            await leaf.close()
        finally:
            for service in nodes.values():
                await service.stop()

    run(main(), timeout=90)


def test_outbound_only_agent_and_command_round_trip(tmp_path, pki, run):
    """agent1 has no listener: everything flows over the connection it opened.

    master2 (scripted HA peer of the master) asks agent1 to execute a command through the
    API path; the master relays it down, agent1 (commands not accepted) answers with
    event::ExecutedCommand exit 126, and the master forwards that to the requester.
    """
    spec = ClusterSpec(tmp_path, pki, [("master", ["master", "master2"], None),
                                       ("agent1", ["agent1"], "master")],
                       dialled={"master"}, timeouts=FAST)

    async def main():
        master = await spec.start("master")
        agent = await spec.start("agent1", listen=False)
        try:
            assert agent.server is None and agent.listen_port is None
            await wait_until(lambda: "agent1" in master.node.connections,
                             what="agent dialled the master")
            assert master.node.connections["agent1"].direction == "inbound"
            peer = await FakePeer.connect(spec.port("master"), pki, "master2",
                                          server_name="master")
            await wait_until(lambda: "master2" in master.node.connections, what="HA peer")
            request = {"command": "hostalive", "command_type": "check_command",
                       "deadline": 4102444800.0, "endpoint": "agent1", "host": "agent1",
                       "macros": {}, "source": "0b9f6c2e-3f1a-4c55-9d7e-2a6a1d8e4f10"}
            peer.send("event::ExecuteCommand", request, ts=1.0)
            await wait_until(lambda: peer.messages("event::ExecutedCommand"),
                             what="execution answer relayed back to the requester")
            [answer] = peer.messages("event::ExecutedCommand")
            params = answer["params"]
            assert params["execution"] == request["source"] and params["exit"] == 126
            assert params["output"] == "Endpoint 'agent1' does not accept commands."
            assert received(agent, "master", "event::ExecuteCommand") == 1

            # Down the same connection: an acknowledgement from the master zone.
            peer.send("event::SetAcknowledgement",
                      {"acktype": 1, "author": "admin", "change_time": 2.0, "comment": "x",
                       "expiry": 0, "host": "agent1", "notify": True, "persistent": False,
                       "service": "disk"}, ts=2.0)
            await wait_until(lambda: received(agent, "master", "event::SetAcknowledgement"),
                             what="acknowledgement at the outbound-only agent")
            await peer.close()
        finally:
            await agent.stop()
            await master.stop()

    run(main(), timeout=60)


def test_dial_fails_over_to_the_next_address(tmp_path, pki, run):
    """An endpoint with a dead first address is reached through its second one (P22)."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")],
                       dialled={"master"}, timeouts=FAST)
    dead = spec.port("nobody-listens-here")
    text = spec.toml("agent1", listen=False).replace(
        f'addresses = ["127.0.0.1:{spec.port("master")}"]',
        f'addresses = ["127.0.0.1:{dead}", "127.0.0.1:{spec.port("master")}"]')
    assert str(dead) in text

    async def main():
        from router.app import RouterService
        from router.config import parse_config

        master = await spec.start("master")
        (tmp_path / "agent1").mkdir(exist_ok=True)
        agent = RouterService(parse_config(text, str(tmp_path / "agent1.toml")))
        await agent.start()
        try:
            await wait_until(lambda: "master" in agent.node.connections,
                             what="session through the second address")
            assert agent.connector.failures.get("master", 0) >= 1
            assert agent.connector.attempts["master"] >= 2
        finally:
            await agent.stop()
            await master.stop()

    run(main(), timeout=60)
