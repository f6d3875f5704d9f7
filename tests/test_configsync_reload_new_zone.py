"""A zone the parent sent while it was not configured here is ignored (as Icinga does);
the operator then adds it to the satellite's configuration and reloads.

An Icinga satellite restarts on reload, reconnects, and its parent sends the update again
on connect, so the zone arrives. The router reloads in-process and keeps the parent
session (that is its point, users.md P2), but it has dropped the ignored zone's files and
config::Update is only ever sent on connect: the new zone never reaches the satellite or
its agents until the parent happens to reconnect (e.g. the next master restart).
Typical order that hits it: the master is deployed first (and restarts, sending the new
agent zone to a satellite that does not know it yet), then the satellite's zones are
updated and reloaded.
"""

from __future__ import annotations

from pathlib import Path

from router.config.load import quickstart_config
from router.routing import EndpointSpec, Topology, ZoneSpec
from tests.test_configsync import HOSTS_CONF, ScriptedNode, make_sync, master_message


def topo(with_new: bool) -> Topology:
    zones = [ZoneSpec("master", ("master1",)), ZoneSpec("satellite", ("sat1",), "master"),
             ZoneSpec("agents", ("agent1",), "satellite")]
    endpoints = [EndpointSpec(n) for n in ("master1", "sat1", "agent1")]
    if with_new:
        zones += [ZoneSpec("agents2", ("agent2",), "satellite"),
                  ZoneSpec("director-global", global_=True)]
        endpoints.append(EndpointSpec("agent2"))
    return Topology(zones, endpoints, "sat1")


def test_zone_added_on_reload_is_taken_from_the_parents_last_update(tmp_path: Path) -> None:
    node = ScriptedNode(topo(False), {"master1", "agent1"})
    sync = make_sync(tmp_path, node)
    params = master_message({"agents": {"hosts.conf": HOSTS_CONF},
                             "agents2": {"hosts.conf": 'object Host "new01" {}\n'},
                             "director-global": {"d.conf": "// director templates\n"}})
    assert sync.receive("master1", params) is None
    assert sorted(sync.zones) == ["agents"]           # the unknown zones are ignored

    # The operator adds the zones the log named and reloads; the parent stays connected.
    node.topology = topo(True)
    cfg = quickstart_config(node_name="sat1", data_dir=str(tmp_path), accept_config=True)
    sync.on_reload(cfg, None)
    node.connected_names.add("agent2")
    sync.endpoint_connected("agent2")
    sent = node.messages("agent2")[-1]["params"]["update"]
    assert "agents2" in sync.zones and "director-global" in sync.zones \
        and sorted(sent) == ["agents2", "director-global"], (
            f"after adding the zones and reloading, the satellite holds {sorted(sync.zones)} "
            f"and agent2 is sent {sorted(sent)}: the parent's update is never applied again "
            f"(an Icinga satellite restarts and gets it on reconnect)")


def test_a_reload_that_takes_the_update_again_still_publishes_the_hosts(tmp_path: Path
                                                                       ) -> None:
    """The reload's new object table gets the hosts of the zones we hold; taking the
    parent's last update again must not skip that when it changes nothing (a zone added
    that the update did not have)."""
    node = ScriptedNode(topo(False), {"master1", "agent1"})
    hosts: list = []
    sync = make_sync(tmp_path, node, hosts=hosts)
    assert sync.receive("master1", master_message({"agents": {"hosts.conf": HOSTS_CONF}})) \
        is None
    published = len(hosts)
    node.topology = topo(True)
    cfg = quickstart_config(node_name="sat1", data_dir=str(tmp_path), accept_config=True)
    sync.on_reload(cfg, None)
    assert len(hosts) > published and hosts[-1] == hosts[published - 1], hosts[-2:]
