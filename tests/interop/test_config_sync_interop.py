"""Config sync with real Icinga 2.13 daemons (docs/config-sync.md).

1. A real master with ``zones.d/agent1/hosts.conf`` and a global zone, our satellite
   (``accept_config``), a real agent (``accept_config``): the agent gets the host through
   our satellite, runs its check with the global template applied, and the result
   reaches the real master's REST API. When the agent reconnects with the configuration
   unchanged, it does not reload: its log says the update equals production.
2. Our master with ``zones_dir`` and a real agent: the synced host's results show up in
   our result view.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perf.icinga import IcingaFactory, IcingaNode
from .routerutil import RouterNode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

CONNECT_TIMEOUT = 25
#: The agent validates the synced configuration and restarts before it checks anything.
SYNC_TIMEOUT = 90

GLOBAL = {"name": "global-templates", "global": True}
CHAIN_ZONES = [
    {"name": "master", "endpoints": ["master"]},
    {"name": "satellite", "endpoints": ["sat1"], "parent": "master"},
    {"name": "agent1", "endpoints": ["agent1"], "parent": "satellite"},
    GLOBAL,
]
MASTER_AGENT_ZONES = [
    {"name": "master", "endpoints": ["master"]},
    {"name": "agent1", "endpoints": ["agent1"], "parent": "master"},
    GLOBAL,
]

TEMPLATE_TEXT = "output set by the global template"
CHANGED_TEXT = "output set by the changed host definition"
GLOBAL_CONF = f"""
template Host "synced-template" {{
  check_command = "dummy"
  check_interval = 2s
  retry_interval = 2s
  vars.dummy_text = "{TEMPLATE_TEXT}"
}}
"""
HOSTS_CONF = """
object Host "synced-host" {
  import "synced-template"
}
"""
EQUAL = "are equal to production, skipping validation and reload"
DIFFERENT = "are different to production, triggering validation and reload"


def write_zones_d(root: Path) -> Path:
    zones_d = root / "zones.d"
    (zones_d / "agent1").mkdir(parents=True, exist_ok=True)
    (zones_d / "agent1/hosts.conf").write_text(HOSTS_CONF)
    (zones_d / "global-templates").mkdir(exist_ok=True)
    (zones_d / "global-templates/templates.conf").write_text(GLOBAL_CONF)
    return zones_d


@pytest.fixture
def routers(icinga_factory: IcingaFactory) -> Iterator[list[RouterNode]]:
    made: list[RouterNode] = []
    yield made
    for router in reversed(made):
        router.stop()


def make_router(factory: IcingaFactory, made: list[RouterNode], name: str,
                **kwargs: Any) -> RouterNode:
    cert, key = factory.issue(name)
    router = RouterNode(factory.base_dir.parent / f"router-{name}", name, cert=cert, key=key,
                        ca=factory.ca_crt, **kwargs)
    made.append(router)
    return router


def agent_log(agent: IcingaNode) -> str:
    return agent.log_path.read_text(errors="replace")


def test_satellite_relays_real_masters_zones_to_real_agent(
        icinga_factory: IcingaFactory, routers: list[RouterNode]) -> None:
    master = icinga_factory("master", "master",
                            endpoints=[{"name": "master"}, {"name": "sat1"},
                                       {"name": "agent1"}],
                            zones=CHAIN_ZONES, accept_config=False,
                            extra_config='include_zones "_etc", "zones.d"')
    write_zones_d(master.config_dir)
    master.start()
    sat = make_router(icinga_factory, routers, "sat1", zones=CHAIN_ZONES,
                      endpoints=[{"name": "master", "host": "127.0.0.1",
                                  "port": master.api_port},
                                 {"name": "sat1"}, {"name": "agent1"}],
                      node_toml="accept_config = true")
    sat.start()
    sat.wait_for(lambda: any(z["zone"] == "agent1"
                             for z in sat.status()["config_zones"] or []),
                 CONNECT_TIMEOUT, what="the master's zones at sat1",
                 extra=lambda: master.diagnostics(40))
    zones = {z["zone"]: z for z in sat.status()["config_zones"]}
    assert sorted(zones) == ["agent1", "global-templates"], zones
    stored = sat.data_dir / "api/zones/agent1/_etc/hosts.conf"
    assert stored.read_text() == HOSTS_CONF

    agent = icinga_factory("agent1", "agent1",
                           endpoints=[{"name": "master"},
                                      {"name": "sat1", "host": "127.0.0.1",
                                       "port": sat.listen_port},
                                      {"name": "agent1"}],
                           zones=CHAIN_ZONES, accept_config=True)
    agent.start()
    started = time.time()

    def synced_result() -> dict | None:
        host = master.host("synced-host")
        cr = host and host.get("last_check_result")
        return cr if cr and cr.get("output") == TEMPLATE_TEXT \
            and cr["execution_end"] >= started else None

    cr = sat.wait_for(synced_result, SYNC_TIMEOUT,
                      what="synced-host's result (global template) on the real master",
                      extra=lambda: master.diagnostics(40) + agent.diagnostics(60))
    assert cr["check_source"] == "agent1", cr
    assert (agent.data_dir / "api/zones/agent1/_etc/hosts.conf").read_text() == HOSTS_CONF
    assert sat.metric("router_config_updates_total", direction="received",
                      result="stored") >= 1
    assert sat.metric("router_messages_refused_total", endpoint="master",
                      method="config::Update") == 0

    # Reconnect with the configuration unchanged: the agent compares and does not reload.
    reloads = agent_log(agent).count(DIFFERENT)
    equal_before = agent_log(agent).count(EQUAL)
    agent.stop()
    agent.start()
    sat.wait_for(lambda: agent_log(agent).count(EQUAL) > equal_before, CONNECT_TIMEOUT * 2,
                 what="'equal to production' in the agent's log after reconnecting",
                 extra=lambda: agent.diagnostics(60))
    assert agent_log(agent).count(DIFFERENT) == reloads, agent.log_tail(80)


def test_router_master_serves_zones_dir_to_real_agent(
        icinga_factory: IcingaFactory, routers: list[RouterNode], tmp_path: Path) -> None:
    zones_d = write_zones_d(tmp_path / "router-zones")
    router = make_router(icinga_factory, routers, "master", zones=MASTER_AGENT_ZONES,
                         endpoints=[{"name": "master"}, {"name": "agent1"}],
                         node_toml=f'zones_dir = "{zones_d}"')
    router.start()
    agent = icinga_factory("agent1", "agent1",
                           endpoints=[{"name": "master", "host": "127.0.0.1",
                                       "port": router.listen_port},
                                      {"name": "agent1"}],
                           zones=MASTER_AGENT_ZONES, accept_config=True)
    agent.start()

    def stored() -> dict | None:
        results = router.checkresults("synced-host")
        return results[0] if results and results[0]["output"] == TEMPLATE_TEXT else None

    result = router.wait_for(stored, SYNC_TIMEOUT,
                             what="synced-host's result in our result view",
                             extra=lambda: agent.diagnostics(60))
    assert result["check_source"] == "agent1" and result["received_from"] == "agent1"
    assert (agent.data_dir / "api/zones/global-templates/_etc/templates.conf"
            ).read_text() == GLOBAL_CONF
    assert router.metric("router_config_updates_total", direction="sent",
                         result="connect") >= 1

    # The file changes, the node reloads: the agent gets the new definition and runs it.
    (zones_d / "agent1/hosts.conf").write_text(HOSTS_CONF.replace(
        'import "synced-template"',
        f'import "synced-template"\n  vars.dummy_text = "{CHANGED_TEXT}"'))
    token = (router.data_dir / "reload.token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{router.status_port}/v1/actions/reload", method="POST", data=b"",
        headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        outcome = json.loads(response.read())
    assert outcome.get("result") == "ok", outcome

    def changed() -> dict | None:
        results = router.checkresults("synced-host")
        return results[0] if results and results[0]["output"] == CHANGED_TEXT else None

    router.wait_for(changed, SYNC_TIMEOUT, what="the changed definition's result",
                    extra=lambda: agent.diagnostics(60))
    assert router.metric("router_config_updates_total", direction="sent",
                         result="change") >= 1
