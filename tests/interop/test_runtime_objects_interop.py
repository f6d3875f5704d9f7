"""Hosts created at runtime through a real Icinga master's REST API (config::UpdateObject)
in an agent's zone, relayed by our satellite to a real Icinga agent.

real master <- our satellite sat1 <- real agent1 (accept_config on the agent). The master
creates ``api-host`` in zone agent1 with ``PUT /v1/objects/hosts/api-host`` (the ordinary
way automation adds hosts). Icinga sends ``config::UpdateObject`` (with ``zone``) down; our
satellite relays it and the agent creates and checks the host. An Icinga satellite would
have created the object too and then accept the agent's results for it, and relay the
master's ``config::DeleteObject`` to the agent when the host is deleted.
"""

from __future__ import annotations

import time

import pytest

from tests.interop.test_router_interop import (
    CHAIN_ZONES, CONNECT_TIMEOUT, PASSIVE_OBJECTS, RESULT_TIMEOUT, diag, refusals,
)

# The interop fixtures (tests/interop/conftest.py: a real Icinga 2.13.6 per node; our
# router in a thread).
from tests.interop.test_router_interop import make_router  # noqa: E402,F401

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

API_HOST = {"attrs": {"zone": "agent1", "check_command": "dummy", "check_interval": 2,
                      "retry_interval": 2, "vars.dummy_text": "api-host checked by agent1"}}


def start_chain(factory, make_router, objects):
    """As tests/interop's start_chain, with our satellite taking configuration from the
    master (accept_config), as a satellite in a config-synced deployment does."""
    master = factory("master", "master",
                     endpoints=[{"name": "master"}, {"name": "sat1"}, {"name": "agent1"}],
                     zones=CHAIN_ZONES, services=objects)
    master.start()
    router = make_router("sat1", zones=CHAIN_ZONES,
                         endpoints=[{"name": "master", "host": "127.0.0.1",
                                     "port": master.api_port},
                                    {"name": "sat1"}, {"name": "agent1"}],
                         node_toml="accept_config = true")
    router.start()
    agent = factory("agent1", "agent1",
                    endpoints=[{"name": "master"},
                               {"name": "sat1", "host": "127.0.0.1",
                                "port": router.listen_port},
                               {"name": "agent1"}],
                    zones=CHAIN_ZONES, services=objects)
    agent.start()
    router.wait_for(lambda: router.endpoint_status("master")["connected"]
                    and router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="master and agent connected to our satellite",
                    extra=lambda: master.diagnostics(40) + agent.diagnostics(40))
    return master, router, agent


def _api_host_on(node):
    def get():
        return node.host("api-host")
    return get


def test_results_of_a_runtime_created_host_reach_the_master(icinga_factory, make_router):
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)
    started = time.time()
    master.api("/v1/objects/hosts/api-host", method="PUT", body=API_HOST)
    # The object crossed our satellite: the agent has it and checks it.
    agent.wait_for(lambda: (h := agent.host("api-host")) and h.get("last_check_result")
                   and h["last_check_result"]["output"] == "api-host checked by agent1",
                   RESULT_TIMEOUT, what="api-host created and checked on the agent")

    def fresh_on_master():
        h = master.host("api-host")
        cr = h and h.get("last_check_result")
        return cr if cr and cr.get("output") == "api-host checked by agent1" \
            and cr["execution_end"] >= started else None

    deadline = time.time() + RESULT_TIMEOUT
    cr = None
    while time.time() < deadline and cr is None:
        cr = fresh_on_master()
        time.sleep(0.5)
    assert cr is not None, (
        "the real agent checks api-host (created by the master in zone agent1 at runtime, "
        "config::UpdateObject relayed by our satellite), but its results never reach the "
        f"master; refusals at our satellite: {refusals(router)}\n{diag(router, master, agent)}")
    assert cr["check_source"] == "agent1", cr


def test_deleting_a_runtime_created_host_reaches_the_agent(icinga_factory, make_router):
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)
    body = {"attrs": {"zone": "agent1", "check_command": "dummy",
                      "enable_active_checks": False}}
    master.api("/v1/objects/hosts/api-host", method="PUT", body=body)
    agent.wait_for(_api_host_on(agent), RESULT_TIMEOUT, what="api-host created on the agent")

    master.api("/v1/objects/hosts/api-host?cascade=1", method="DELETE")
    assert master.host("api-host") is None
    router.wait_for(lambda: router.metric("router_messages_received_total", endpoint="master",
                                          method="config::DeleteObject") >= 1, 10,
                    what="the master's config::DeleteObject at our satellite")
    deadline = time.time() + 20
    while time.time() < deadline and agent.host("api-host") is not None:
        time.sleep(0.5)
    assert agent.host("api-host") is None, (
        "the master deleted api-host (zone agent1) and sent config::DeleteObject to our "
        "satellite, but the deletion never reached the agent, which keeps the host: sent "
        f"to agent1: {router.metric('router_messages_sent_total', endpoint='agent1', method='config::DeleteObject')}"
        f"\n{diag(router, master, agent)}")


def test_runtime_created_host_reaches_an_agent_that_was_offline(icinga_factory, make_router):
    """Icinga relays config::UpdateObject unlogged (RelayMessage(..., false)) and relies on
    ApiListener::SendRuntimeConfigObjects: every node sends a connecting child the runtime
    objects it holds for the child's zone. An Icinga satellite created api-host when the
    master sent it, and gives it to agent1 when agent1 connects."""
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)
    agent.stop()
    router.wait_for(lambda: not router.endpoint_status("agent1")["connected"], 10,
                    what="agent1 gone from our satellite")
    body = {"attrs": {"zone": "agent1", "check_command": "dummy",
                      "enable_active_checks": False}}
    master.api("/v1/objects/hosts/api-host", method="PUT", body=body)
    router.wait_for(lambda: router.metric("router_messages_received_total", endpoint="master",
                                          method="config::UpdateObject") >= 1, 10,
                    what="the master's config::UpdateObject at our satellite")
    agent.start()
    router.wait_for(lambda: router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="agent1 back at our satellite", extra=lambda: agent.diagnostics(40))
    deadline = time.time() + 20
    while time.time() < deadline and agent.host("api-host") is None:
        time.sleep(0.5)
    assert agent.host("api-host") is not None, (
        "api-host was created on the master (zone agent1) while agent1 was disconnected from "
        "our satellite; after agent1 reconnected it never got the object (an Icinga "
        "satellite sends a connecting child its runtime objects), so the agent never "
        f"monitors it\n{diag(router, master, agent)}")


GLOBAL_ZONES = CHAIN_ZONES + [{"name": "global-templates", "global": True}]


def test_deleting_a_runtime_object_of_a_global_zone_reaches_the_agent(icinga_factory,
                                                                      make_router):
    """A CheckCommand created at runtime in a global zone reaches the agent (UpdateObject
    carries zone global-templates); its config::DeleteObject carries no zone, and Icinga
    relays it towards the object's zone (global: our zone and every child zone)."""
    master = icinga_factory("master", "master",
                            endpoints=[{"name": "master"}, {"name": "sat1"}, {"name": "agent1"}],
                            zones=GLOBAL_ZONES, services=PASSIVE_OBJECTS)
    master.start()
    router = make_router("sat1", zones=GLOBAL_ZONES,
                         endpoints=[{"name": "master", "host": "127.0.0.1",
                                     "port": master.api_port},
                                    {"name": "sat1"}, {"name": "agent1"}],
                         node_toml="accept_config = true")
    router.start()
    agent = icinga_factory("agent1", "agent1",
                           endpoints=[{"name": "master"},
                                      {"name": "sat1", "host": "127.0.0.1",
                                       "port": router.listen_port}, {"name": "agent1"}],
                           zones=GLOBAL_ZONES, services=PASSIVE_OBJECTS)
    agent.start()
    router.wait_for(lambda: router.endpoint_status("master")["connected"]
                    and router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="master and agent connected to our satellite")

    def command(node):
        try:
            return node.api("/v1/objects/checkcommands/api-cmd")["results"]
        except Exception:  # 404: not there
            return None

    master.api("/v1/objects/checkcommands/api-cmd", method="PUT",
               body={"attrs": {"command": ["/bin/true"], "zone": "global-templates"}})
    agent.wait_for(lambda: command(agent), RESULT_TIMEOUT,
                   what="api-cmd (global zone) created on the agent")
    master.api("/v1/objects/checkcommands/api-cmd", method="DELETE")
    assert not command(master)
    deadline = time.time() + 20
    while time.time() < deadline and command(agent):
        time.sleep(0.5)
    assert not command(agent), (
        "the master deleted the runtime CheckCommand api-cmd of global zone global-templates; "
        "the config::DeleteObject reached our satellite but not the agent, which keeps it"
        f"\n{diag(router, master, agent)}")
