"""Self-test of the interop harness: two real Icinga 2 nodes, no router in between.

If this fails, the harness (or the machine) is broken, not the router.
"""

from __future__ import annotations

import pytest

from perf.icinga import IcingaFactory

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

# The same objects go into both configs: the agent schedules them (they are in its zone),
# the master needs them to accept the results (unknown objects are dropped silently).
AGENT_OBJECTS = """
object Host "agent1" {
  zone = "agent1"
  check_command = "dummy"
  check_interval = 2s
  retry_interval = 2s
  vars.dummy_text = "agent1 host ok"
}

object Service "ping-dummy" {
  zone = "agent1"
  host_name = "agent1"
  check_command = "dummy"
  check_interval = 2s
  retry_interval = 2s
  vars.dummy_text = "hello from agent"
}

object Service "passive" {
  zone = "agent1"
  host_name = "agent1"
  check_command = "dummy"
  enable_active_checks = false
}
"""

ZONES = [
    {"name": "master", "endpoints": ["master"]},
    {"name": "agent1", "endpoints": ["agent1"], "parent": "master"},
]


def test_agent_dials_master_and_results_arrive(icinga_factory: IcingaFactory) -> None:
    master = icinga_factory("master", "master", endpoints=[{"name": "master"}, {"name": "agent1"}],
                            zones=ZONES, services=AGENT_OBJECTS)
    agent = icinga_factory(
        "agent1", "agent1",
        endpoints=[{"name": "master", "host": "127.0.0.1", "port": master.api_port},
                   {"name": "agent1"}],
        zones=ZONES, services=AGENT_OBJECTS,
    )
    # Sequentially: the agent dials at once and, if refused, only again after 10 s.
    master.start()
    agent.start()

    master.wait_for(lambda: "agent1" in master.connected_endpoints(), 20,
                    what="agent1 in the master's conn_endpoints")
    assert agent.connected_endpoints() == ["master"]
    assert master.api_listener_status()["zones"]["agent1"]["connected"] is True

    # An active check scheduled by the agent's checker, relayed to the master.
    def relayed_result() -> dict | None:
        attrs = master.service("agent1", "ping-dummy")
        cr = attrs and attrs.get("last_check_result")
        return cr if cr and cr.get("output") == "hello from agent" else None

    cr = master.wait_for(relayed_result, 30, what="agent1's check result on the master")
    assert cr["check_source"] == "agent1"
    assert cr["exit_status"] == 0

    # A passive result submitted on the agent over REST travels up to the master ...
    agent.process_check_result("agent1", "passive", 2, "CRITICAL - submitted on agent1")

    def passive_on_master() -> dict | None:
        attrs = master.service("agent1", "passive")
        cr = attrs and attrs.get("last_check_result")
        return attrs if cr and cr.get("output") == "CRITICAL - submitted on agent1" else None

    attrs = master.wait_for(passive_on_master, 15, what="the passive result on the master")
    assert attrs["state"] == 2

    # ... and an acknowledgement set on the master travels down to the agent.
    master.acknowledge("agent1", "passive", "looking into it")
    agent.wait_for(lambda: agent.service("agent1", "passive")["acknowledgement"] == 1, 15,
                   what="the master's acknowledgement on the agent")

    # Clean shutdown, and stop() is idempotent.
    assert agent.stop() == 0
    assert agent.stop() == 0
    master.wait_for(lambda: "agent1" not in master.connected_endpoints(), 15,
                    what="agent1 to disappear from the master's conn_endpoints")
