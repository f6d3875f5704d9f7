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

from .icinga import IcingaFactory
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
    assert load["output"].startswith("LOAD OK"), load
    assert any(str(p).startswith("load1=") or (isinstance(p, dict) and p.get("label") == "load1")
               for p in load["performance_data"]), load
    status = router.endpoint_status("master")
    assert status["connected"] and status["relation"] == "parent"
