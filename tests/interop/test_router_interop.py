"""The router between real Icinga 2.13.6 daemons.

Our router runs in-process (a background thread with its own uvloop, see
``routerutil.RouterNode``); the Icinga daemons are subprocesses of the harness, started
from the test's own thread. All nodes share the factory's CA; everything is on 127.0.0.1.

Scenarios (docs/interop.md, "Router scenarios"):

1. a real agent dials our master;
2. our master dials a listening real agent;
3. our satellite between a real master and a real agent (satellite dials the master,
   the agent dials the satellite): the agent's results must reach the real master;
4. as 3, with five distinct passive results: each one crosses the satellite exactly once.

5. the router confirms log positions to Icinga peers (log::SetLogPosition every 5 s),
   so an agent does not replay old outages on every reconnect;
6. /v1/status shows the bound ports for listeners configured with port 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from perf.icinga import IcingaFactory, IcingaNode
from .routerutil import RouterNode, metric_value, parse_metrics

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

AGENT_TEXT = "hello from a real agent"
CR = "event::CheckResult"
#: Icinga dials at start-up and then every 10 s; allow for one missed round and a bit.
CONNECT_TIMEOUT = 25
#: First active check: random offset up to one check_interval (2 s), then relaying.
RESULT_TIMEOUT = 30

# Host + active service, scheduled by the agent's own checker (zone "agent1").
AGENT_OBJECTS = f"""
object Host "agent1" {{
  zone = "agent1"
  check_command = "dummy"
  check_interval = 2s
  retry_interval = 2s
  vars.dummy_text = "agent1 host ok"
}}

object Service "dummy-svc" {{
  zone = "agent1"
  host_name = "agent1"
  check_command = "dummy"
  check_interval = 2s
  retry_interval = 2s
  vars.dummy_text = "{AGENT_TEXT}"
}}
"""

# Scenario 4: nothing active, only results we submit; every CheckResult is one of ours.
PASSIVE_OBJECTS = """
object Host "agent1" {
  zone = "agent1"
  check_command = "dummy"
  enable_active_checks = false
}

object Service "passive-svc" {
  zone = "agent1"
  host_name = "agent1"
  check_command = "dummy"
  enable_active_checks = false
}
"""

MASTER_AGENT_ZONES = [
    {"name": "master", "endpoints": ["master"]},
    {"name": "agent1", "endpoints": ["agent1"], "parent": "master"},
]

CHAIN_ZONES = [
    {"name": "master", "endpoints": ["master"]},
    {"name": "satellite", "endpoints": ["sat1"], "parent": "master"},
    {"name": "agent1", "endpoints": ["agent1"], "parent": "satellite"},
]

#: What a real master sends our satellite that the router legitimately refuses: the
#: zone config sync on connect (this satellite runs without accept_config, as Icinga's
#: default; the master's update is empty here anyway). (endpoint, method, reason) as in
#: router_messages_refused_total.
EXPECTED_SATELLITE_REFUSALS = {("master", "config::Update", "not_accepted")}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


RouterMaker = Callable[..., RouterNode]


@pytest.fixture
def make_router(request: pytest.FixtureRequest,
                icinga_factory: IcingaFactory) -> Iterator[RouterMaker]:
    """``make_router(name, **RouterNode kwargs)``: our node (not started) with a certificate
    from the factory's CA, in ``<tmp>/router-<name>/``.

    Every router made is stopped at teardown, before the Icinga nodes (this fixture
    depends on ``icinga_factory``). When the test failed, each router's status document
    and log tail are attached to the report, next to the Icinga logs.
    """
    made: list[RouterNode] = []

    def make(name: str, **kwargs: Any) -> RouterNode:
        cert, key = icinga_factory.issue(name)
        router = RouterNode(icinga_factory.base_dir.parent / f"router-{name}", name,
                            cert=cert, key=key, ca=icinga_factory.ca_crt, **kwargs)
        made.append(router)
        return router

    yield make
    report = getattr(request.node, "rep_call", None)
    text = ""
    if report is not None and report.failed and made:
        text = "\n".join(r.diagnostics(80) for r in made)  # while still running
    errors = []
    for router in reversed(made):
        try:
            router.stop()
        except RuntimeError as exc:  # pragma: no cover - reported, other routers still stop
            errors.append(exc)
    if text:
        report.sections.append(("router logs", text))
    if errors:
        raise errors[0]


def refusals(router: RouterNode) -> dict[tuple[str, str, str], float]:
    """(endpoint, method, reason) -> count, from router_messages_refused_total."""
    return {(labels.get("endpoint", ""), labels.get("method", ""), labels.get("reason", "")):
            value for name, labels, value in parse_metrics(router.metrics())
            if name == "router_messages_refused_total" and value > 0}


def diag(router: RouterNode, *nodes: IcingaNode) -> str:
    """Failure text: our status document and log tail, plus the Icinga nodes' log tails."""
    return "\n".join([router.diagnostics(), *(n.diagnostics(40) for n in nodes)])


def service_result(node: IcingaNode, host: str, service: str, output: str) -> dict | None:
    """The node's last_check_result of host!service when its output is ``output``."""
    attrs = node.service(host, service)
    cr = attrs and attrs.get("last_check_result")
    return cr if cr and cr.get("output") == output else None


def assert_master_view(router: RouterNode, agent: IcingaNode, direction: str) -> None:
    """Scenarios 1 and 2: what our master must show about a connected real agent."""
    __tracebackhide__ = True
    status = router.wait_for(
        lambda: (s := router.endpoint_status("agent1"))["connected"]
        and s["icinga_version"] is not None and s,
        CONNECT_TIMEOUT, what="agent1 connected to our master (with its icinga::Hello)",
        extra=lambda: agent.diagnostics(40))
    assert status["icinga_version"] == 21306, diag(router, agent)
    assert status["direction"] == direction, diag(router, agent)
    assert status["relation"] == "child"
    agent.wait_for(lambda: agent.connected_endpoints() == ["master"], 10,
                   what="our master in the agent's conn_endpoints")

    def stored_result() -> dict | None:
        results = router.checkresults("agent1", "dummy-svc")
        return results[0] if results and results[0]["output"] == AGENT_TEXT else None

    result = router.wait_for(stored_result, RESULT_TIMEOUT,
                             what="agent1!dummy-svc in our /v1/objects/checkresults",
                             extra=lambda: agent.diagnostics(40))
    assert result["host"] == "agent1" and result["service"] == "dummy-svc"
    assert result["check_source"] == "agent1", result
    assert result["received_from"] == "agent1", result
    assert result["exit_status"] == 0 and result["state"] == 0, result
    assert result["active"] is True, result
    # The agent's host check arrives too (a host result has no service).
    router.wait_for(lambda: any(r["service"] is None and r["output"] == "agent1 host ok"
                                for r in router.checkresults("agent1")), RESULT_TIMEOUT,
                    what="agent1's host check result", extra=lambda: agent.diagnostics(40))

    received = router.metric("router_messages_received_total", endpoint="agent1", method=CR)
    assert received > 0, diag(router, agent)
    assert router.status()["totals"]["check_results"] >= 2
    # Icinga parsed our icinga::Hello.
    assert agent.endpoint("master")["icinga_version"] == 21306

    refused = refusals(router)
    assert not [k for k in refused if k[0] == "agent1" and k[1] == CR], (
        f"our master refused check results from the real agent: {refused}\n"
        f"{diag(router, agent)}")
    # An agent that only runs local checks sends pki::RequestCertificate (answered
    # silently: its certificate is current), log::SetLogPosition, event::SetNextCheck,
    # event::SetLastCheckStarted and event::CheckResult: none of them may be refused.
    assert not refused, f"unexpected refusals: {refused}\n{diag(router, agent)}"
    assert router.endpoint_status("agent1")["refused"] == 0, diag(router, agent)


def start_master_with_dialling_agent(factory: IcingaFactory, make_router: RouterMaker,
                                     objects: str = AGENT_OBJECTS
                                     ) -> tuple[RouterNode, IcingaNode]:
    """Our master (started first: the agent dials at once, then only every 10 s) and a
    real agent that has our address."""
    router = make_router("master", zones=MASTER_AGENT_ZONES,
                         endpoints=[{"name": "master"}, {"name": "agent1"}])
    router.start()
    agent = factory("agent1", "agent1",
                    endpoints=[{"name": "master", "host": "127.0.0.1",
                                "port": router.listen_port},
                               {"name": "agent1"}],
                    zones=MASTER_AGENT_ZONES, services=objects)
    agent.start()
    return router, agent


# --------------------------------------------------------------------------------------
# 1. real agent dials our master
# --------------------------------------------------------------------------------------


def test_icinga_agent_dials_router_master(icinga_factory: IcingaFactory,
                                          make_router: RouterMaker) -> None:
    router, agent = start_master_with_dialling_agent(icinga_factory, make_router)
    assert_master_view(router, agent, direction="inbound")
    # We never dialled: the agent has no address in our config.
    assert router.metric("router_connect_attempts_total", endpoint="agent1") == 0


# --------------------------------------------------------------------------------------
# 2. our master dials a listening real agent
# --------------------------------------------------------------------------------------


def test_router_dials_listening_icinga_agent(icinga_factory: IcingaFactory,
                                             make_router: RouterMaker) -> None:
    # The agent knows the master endpoint without host: it only accepts.
    agent = icinga_factory("agent1", "agent1",
                           endpoints=[{"name": "master"}, {"name": "agent1"}],
                           zones=MASTER_AGENT_ZONES, services=AGENT_OBJECTS)
    agent.start()  # first: our dialler then connects at once
    router = make_router("master", zones=MASTER_AGENT_ZONES,
                         endpoints=[{"name": "master"},
                                    {"name": "agent1", "host": "127.0.0.1",
                                     "port": agent.api_port}])
    router.start()
    assert_master_view(router, agent, direction="outbound")
    assert router.metric("router_connect_attempts_total", endpoint="agent1") >= 1
    # The agent never dials: it has no address for us.
    assert "Not connecting to Endpoint 'master' because the host/port attributes are " \
        "missing" in agent.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------------------
# 3./4. real master <- our satellite <- real agent
# --------------------------------------------------------------------------------------


def start_chain(factory: IcingaFactory, make_router: RouterMaker, objects: str
                ) -> tuple[IcingaNode, RouterNode, IcingaNode]:
    """Real master, our satellite sat1 (dials the master), real agent (dials sat1).

    Start order follows the dial direction, so nobody waits for Icinga's 10 s timer:
    master, then our satellite, then the agent. The objects live in zone agent1 in the
    master's config (to accept the results) and the agent's (to schedule them).
    """
    master = factory("master", "master",
                     endpoints=[{"name": "master"}, {"name": "sat1"}, {"name": "agent1"}],
                     zones=CHAIN_ZONES, services=objects)
    master.start()
    router = make_router("sat1", zones=CHAIN_ZONES,
                         endpoints=[{"name": "master", "host": "127.0.0.1",
                                     "port": master.api_port},
                                    {"name": "sat1"}, {"name": "agent1"}])
    router.start()
    agent = factory("agent1", "agent1",
                    endpoints=[{"name": "master"},
                               {"name": "sat1", "host": "127.0.0.1",
                                "port": router.listen_port},
                               {"name": "agent1"}],
                    zones=CHAIN_ZONES, services=objects)
    agent.start()
    router.wait_for(lambda: router.endpoint_status("master")["connected"], CONNECT_TIMEOUT,
                    what="our satellite connected to the real master",
                    extra=lambda: master.diagnostics(40))
    master.wait_for(lambda: "sat1" in master.connected_endpoints(), 10,
                    what="sat1 in the master's conn_endpoints")
    router.wait_for(lambda: router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="the real agent connected to our satellite",
                    extra=lambda: agent.diagnostics(40))
    return master, router, agent


def test_router_satellite_between_icinga_master_and_agent(icinga_factory: IcingaFactory,
                                                           make_router: RouterMaker) -> None:
    master, router, agent = start_chain(icinga_factory, make_router, AGENT_OBJECTS)
    sat_status = router.status()
    assert sat_status["node"]["role"] == "satellite"
    eps = {e["name"]: e for e in sat_status["endpoints"]}
    assert eps["master"]["direction"] == "outbound" and eps["master"]["relation"] == "parent"
    assert eps["agent1"]["direction"] == "inbound" and eps["agent1"]["relation"] == "child"
    router.wait_for(lambda: all(router.endpoint_status(n)["icinga_version"] == 21306
                                for n in ("master", "agent1")), 10,
                    what="icinga::Hello (version 21306) from both real nodes")
    assert agent.connected_endpoints() == ["sat1"]
    assert master.endpoint("sat1")["icinga_version"] == 21306  # our Hello, as Icinga saw it

    started = time.time()

    def fresh_on_master() -> dict | None:
        cr = service_result(master, "agent1", "dummy-svc", AGENT_TEXT)
        return cr if cr and cr["execution_end"] >= started - 60 else None

    cr = router.wait_for(fresh_on_master, RESULT_TIMEOUT,
                         what="a fresh agent1!dummy-svc result on the real master",
                         extra=lambda: master.diagnostics(60) + "\n" + agent.diagnostics(30))
    assert cr["check_source"] == "agent1", cr
    assert cr["exit_status"] == 0 and cr["state"] == 0, cr
    assert time.time() - cr["execution_end"] < 60, cr
    # The host check crosses the satellite too.
    master.wait_for(lambda: (h := master.host("agent1")) and h.get("last_check_result")
                    and h["last_check_result"]["output"] == "agent1 host ok",
                    RESULT_TIMEOUT, what="agent1's host result on the real master")

    assert router.metric("router_messages_received_total", endpoint="agent1", method=CR) > 0
    assert router.metric("router_messages_sent_total", endpoint="master", method=CR) > 0
    refused = refusals(router)
    assert set(refused) <= EXPECTED_SATELLITE_REFUSALS, (
        f"unexpected refusals at our satellite: {refused}\n{diag(router, master, agent)}")
    # The master accepted what we relayed (it says "Unauthorized access" otherwise).
    master_log = master.log_path.read_text(errors="replace")
    assert "Unauthorized access" not in master_log, master.log_tail(80)
    # A satellite keeps no result view (results = auto and it has a parent).
    assert router.checkresults() == []


def test_router_chain_with_icinga_agent_results_unique(icinga_factory: IcingaFactory,
                                                        make_router: RouterMaker) -> None:
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)

    def counts() -> tuple[float, float]:
        text = router.metrics()
        return (metric_value(text, "router_messages_received_total", endpoint="agent1",
                             method=CR),
                metric_value(text, "router_messages_sent_total", endpoint="master",
                             method=CR))

    assert counts() == (0, 0), "no active checks: no result may flow before ours"
    for i in range(1, 6):
        output = f"r{i}"
        # Alternate CRITICAL/OK so that every result is a state change on the master.
        agent.process_check_result("agent1", "passive-svc", 2 if i % 2 else 0, output)
        cr = router.wait_for(
            lambda o=output: service_result(master, "agent1", "passive-svc", o),
            RESULT_TIMEOUT, what=f"passive result {output!r} on the real master",
            extra=lambda: master.diagnostics(60) + "\n" + agent.diagnostics(30))
        assert cr["check_source"] == "agent1", cr
        assert cr["active"] is False, cr
        # Exactly i results crossed the satellite so far: one in, one out each.
        router.wait_for(lambda n=i: counts() == (n, n), 5,
                        what=f"{i} results in and {i} out at the satellite",
                        extra=lambda: f"counts (in from agent1, out to master): {counts()}")

    # Nothing more trickles in later (no duplicate, no replay).
    time.sleep(1.5)
    assert counts() == (5, 5), diag(router, master, agent)
    attrs = master.service("agent1", "passive-svc")
    assert attrs["last_check_result"]["output"] == "r5" and attrs["state"] == 2
    # The master processed exactly five passive service results (its CIB counts every
    # result ProcessCheckResult handled; a duplicate with the same execution_start
    # would be counted too), and so did the agent.
    for node in (master, agent):
        cib = node.api("/v1/status/CIB")["results"][0]["status"]
        assert cib["passive_service_checks_1min"] == 5, (node.name, cib)
    refused = refusals(router)
    assert set(refused) <= EXPECTED_SATELLITE_REFUSALS, (
        f"unexpected refusals at our satellite: {refused}\n{diag(router, master, agent)}")


# --------------------------------------------------------------------------------------
# 5. log positions
# --------------------------------------------------------------------------------------


def test_router_confirms_log_position_to_icinga_agent(icinga_factory: IcingaFactory,
                                                      make_router: RouterMaker) -> None:
    """Icinga's ApiTimerHandler sends every connected endpoint, every 5 s,
    ``log::SetLogPosition {log_position: <ts of the last message received from it>}``
    (no ``ts``); the peer stores it as its ``local_log_position`` for us and, after a
    reconnect, replays only newer messages. Between two real 2.13.6 nodes the agent's
    local_log_position for its master is set about 5 s after the connect."""
    router, agent = start_master_with_dialling_agent(icinga_factory, make_router)
    router.wait_for(lambda: router.checkresults("agent1", "dummy-svc"), RESULT_TIMEOUT,
                    what="a first result from the agent", extra=lambda: agent.diagnostics())
    agent.wait_for(lambda: agent.endpoint("master")["local_log_position"] > 0, 15,
                   what="the agent's local_log_position for our master (confirmed by a "
                        "log::SetLogPosition from us)")


# --------------------------------------------------------------------------------------
# 6. status document with port 0
# --------------------------------------------------------------------------------------


def test_status_document_shows_bound_ports(make_router: RouterMaker) -> None:
    """Every router here listens on port 0 (configuration.md: "Port 0 picks a free port
    (tests)"); /v1/status documents ``listen``/``status_listen`` as the listeners'
    ``host:port``, which is only useful with the port actually bound."""
    router = make_router("master", zones=MASTER_AGENT_ZONES,
                         endpoints=[{"name": "master"}, {"name": "agent1"}])
    router.start()
    node = router.status()["node"]
    assert node["listen"] == f"127.0.0.1:{router.listen_port}", node
    assert node["status_listen"] == f"127.0.0.1:{router.status_port}", node
