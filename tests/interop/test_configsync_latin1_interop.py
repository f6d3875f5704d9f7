"""A real Icinga 2.13 master with one ``*.conf`` file that is not UTF-8 (a Latin-1
comment, common in European deployments) in zones.d.

Icinga's LoadConfigDir sanitizes ``*.conf`` content with ``Utility::ValidateUTF8``
(invalid bytes become U+FFFD) and syncs it; the checksums it sends match the sanitized
text, and an Icinga satellite/agent takes it (HandleConfigUpdate has no UTF-8 check).
Our satellite refuses the WHOLE update as ``invalid_utf8`` because the content contains
U+FFFD, so neither the affected zone nor any other zone (global templates, other agents)
ever reaches the satellite or its agents.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from perf.icinga import IcingaFactory
from tests.interop.routerutil import RouterNode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

ZONES = [
    {"name": "master", "endpoints": ["master"]},
    {"name": "satellite", "endpoints": ["sat1"], "parent": "master"},
    {"name": "agent1", "endpoints": ["agent1"], "parent": "satellite"},
    {"name": "global-templates", "global": True},
]
HOSTS_CONF = (b'// Verantwortlich: J\xfcrgen M\xfcller (Gr\xfc\xdfe)\n'
              b'object Host "latin1-host" {\n  check_command = "dummy"\n}\n')
GLOBAL_CONF = b'template Host "latin1-template" {\n  check_interval = 5s\n}\n'


def test_real_master_latin1_conf_is_not_refused_whole(tmp_path: Path,
                                                     icinga_factory: IcingaFactory) -> None:
    master = icinga_factory("master", "master",
                            endpoints=[{"name": "master"}, {"name": "sat1"},
                                       {"name": "agent1"}],
                            zones=ZONES, accept_config=False,
                            extra_config='include_zones "_etc", "zones.d"')
    zones_d = master.config_dir / "zones.d"
    (zones_d / "agent1").mkdir(parents=True)
    (zones_d / "agent1/hosts.conf").write_bytes(HOSTS_CONF)
    (zones_d / "global-templates").mkdir()
    (zones_d / "global-templates/templates.conf").write_bytes(GLOBAL_CONF)
    master.start()
    # Icinga itself takes the file: the host exists on the master.
    master.wait_for(lambda: master.host("latin1-host"), 20, what="latin1-host on the master")

    cert, key = icinga_factory.issue("sat1")
    sat = RouterNode(icinga_factory.base_dir.parent / "router-sat1", "sat1", cert=cert,
                     key=key, ca=icinga_factory.ca_crt, zones=ZONES,
                     endpoints=[{"name": "master", "host": "127.0.0.1",
                                 "port": master.api_port},
                                {"name": "sat1"}, {"name": "agent1"}],
                     node_toml="accept_config = true")
    sat.start()
    try:
        deadline = time.time() + 30
        held: list[str] = []
        refused = 0.0
        while time.time() < deadline:
            held = sorted(z["zone"] for z in sat.status().get("config_zones") or [])
            refused = sat.metric("router_config_updates_total", direction="received",
                                 result="invalid_utf8")
            if "agent1" in held or refused:
                break
            time.sleep(0.5)
        assert refused == 0 and held == ["agent1", "global-templates"], (
            f"our satellite refused the real master's config::Update whole "
            f"(invalid_utf8 refusals: {refused}; zones held: {held}) because Icinga "
            f"sends a Latin-1 *.conf sanitized to U+FFFD; an Icinga satellite takes it, "
            f"and even the unrelated global zone never arrives.\n{sat.log_tail(15)}")
    finally:
        sat.stop()
