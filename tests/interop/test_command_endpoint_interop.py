"""A real Icinga 2.13 master runs command_endpoint checks on our node.

The master owns the objects (its own zone) and schedules them; for each check it sends
``event::ExecuteCommand`` to our node, which runs the ITL command from its own catalog on
its executor processes and answers with ``event::CheckResult``. The master accepts that
result because the sender is the checkable's command_endpoint.
"""

from __future__ import annotations

import os
import time

import pytest

from perf.icinga import IcingaFactory
from .test_router_interop import MASTER_AGENT_ZONES, RouterMaker, diag, make_router  # noqa: F401

REMOTE_OBJECTS = """
object Host "agent1" {
  zone = "master"
  check_command = "dummy"
  enable_active_checks = false
}

object Service "remote-dummy" {
  host_name = "agent1"
  zone = "master"
  check_command = "dummy"
  command_endpoint = "agent1"
  check_interval = 2s
  retry_interval = 2s
  vars.dummy_state = 1
  vars.dummy_text = "remote dummy run by the router"
}

object Service "remote-load" {
  host_name = "agent1"
  zone = "master"
  check_command = "load"
  command_endpoint = "agent1"
  check_interval = 2s
  retry_interval = 2s
}
"""


def test_icinga_master_runs_command_endpoint_checks_on_router(
        icinga_factory: IcingaFactory, make_router: RouterMaker) -> None:
    if not os.access("/usr/lib/nagios/plugins/check_load", os.X_OK):
        pytest.skip("monitoring-plugins-basic (check_load) is not installed")
    master = icinga_factory("master", "master",
                            endpoints=[{"name": "master"}, {"name": "agent1"}],
                            zones=MASTER_AGENT_ZONES, services=REMOTE_OBJECTS)
    master.start()
    router = make_router("agent1", zones=MASTER_AGENT_ZONES,
                         endpoints=[{"name": "master", "host": "127.0.0.1",
                                     "port": master.api_port}, {"name": "agent1"}],
                         node_toml="accept_commands = true")
    router.start()
    started = time.time()

    def fresh(service: str):
        attrs = master.service("agent1", service)
        cr = attrs and attrs.get("last_check_result")
        return cr if cr and cr.get("execution_end", 0) >= started else None

    dummy = master.wait_for(lambda: fresh("remote-dummy"), 40,
                            what="remote-dummy result from our node on the master")
    assert dummy["output"] == "remote dummy run by the router", diag(router, master)
    assert dummy["state"] == 1 and dummy["check_source"] == "agent1", dummy
    load = master.wait_for(lambda: fresh("remote-load"), 40,
                           what="remote-load result from our node on the master")
    # The plugin really ran on our executors: its verdict follows the machine's load
    # (a busy test machine pushes it past check_load's thresholds), its state matches it.
    verdicts = {"LOAD OK": 0, "LOAD WARNING": 1, "LOAD CRITICAL": 2}
    word = next((w for w in verdicts if load["output"].startswith(w)), None)
    assert word is not None and load["state"] == verdicts[word], load
    assert any(str(p).startswith("load1=") or (isinstance(p, dict) and p.get("label") == "load1")
               for p in load["performance_data"]), load
    status = router.endpoint_status("master")
    assert status["connected"] and status["relation"] == "parent"


CHECKS_ON_ICINGA_AGENT = """
[[checks]]
host = "agent1"
service = "remote-dummy"
command = "dummy"
command_endpoint = "agent1"
interval = 2
retry_interval = 2
[checks.macros]
dummy_state = 2
dummy_text = "dummy run by a real Icinga agent"

[[checks]]
host = "agent1"
service = "remote-ping"
command = "ping4"
command_endpoint = "agent1"
interval = 2
retry_interval = 2
[checks.macros]
address = "127.0.0.1"
ping_wrta = 100
ping_crta = 200
ping_wpl = 50
ping_cpl = 80
ping_packets = 1
ping_timeout = 5
"""


def test_router_master_runs_checks_on_icinga_agent(icinga_factory: IcingaFactory,
                                                   make_router: RouterMaker) -> None:
    """Our master schedules checks whose command_endpoint is a real Icinga 2 agent."""
    router = make_router("master", zones=MASTER_AGENT_ZONES,
                         endpoints=[{"name": "master"}, {"name": "agent1"}],
                         extra_toml=CHECKS_ON_ICINGA_AGENT)
    router.start()
    agent = icinga_factory("agent1", "agent1",
                           endpoints=[{"name": "master", "host": "127.0.0.1",
                                       "port": router.listen_port}, {"name": "agent1"}],
                           zones=MASTER_AGENT_ZONES, accept_commands=True, checker=False)
    agent.start()

    def result(service: str):
        results = router.checkresults("agent1", service)
        return results[0] if results and results[0]["check_source"] == "agent1" else None

    dummy = router.wait_for(lambda: result("remote-dummy"), 40,
                            what="remote-dummy result from the real agent",
                            extra=lambda: agent.diagnostics(40))
    assert dummy["state"] == 2 and dummy["output"] == "dummy run by a real Icinga agent"
    if os.access("/usr/lib/nagios/plugins/check_ping", os.X_OK):
        ping = router.wait_for(lambda: result("remote-ping"), 40,
                               what="remote-ping result from the real agent",
                               extra=lambda: agent.diagnostics(40))
        assert "PING" in ping["output"], ping
    refused = router.metric("router_messages_refused_total", endpoint="agent1",
                            method="event::CheckResult", reason="wrong_zone")
    assert refused == 0, diag(router, agent)
