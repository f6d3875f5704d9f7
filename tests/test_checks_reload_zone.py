"""A reload that adds a second endpoint to the node's zone (zones_membership, applied
live, not restart_required) leaves the check scheduler with the zone of the start: it
keeps running every check itself while the new member runs its SDBM share too, so half
of the checks run twice in the HA zone until the next restart."""

from __future__ import annotations

import time

from router.features.scheduler import sdbm
from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki


def test_zone_membership_reload_reaches_the_scheduler(tmp_path, run):
    from router.app import RouterService
    from router.config import load_config

    pki = make_test_pki(tmp_path / "pki", ["m1", "m2"])
    host = next(f"h{i}" for i in range(1000) if sdbm(f"h{i}!alive") % 2 == 1)
    checks = ("[[checks]]\n"
              f'host = "{host}"\nservice = "alive"\ncommand = "dummy"\n'
              "interval = 1\nretry_interval = 1\n"
              "[checks.macros]\ndummy_state = 0\n")
    alone = ClusterSpec(tmp_path, pki, [("master", ["m1"], None)])
    path = tmp_path / "m1.toml"
    (tmp_path / "m1").mkdir()
    path.write_text(alone.toml("m1") + checks)

    async def main():
        m1 = RouterService(load_config(str(path)))
        await m1.start()
        try:
            pair = ClusterSpec(tmp_path, pki, [("master", ["m1", "m2"], None)],
                               ports=dict(alone.ports))
            path.write_text(pair.toml("m1") + checks)
            record = await m1.reload("test")
            assert record.result == "ok", record.error
            assert "checks" not in record.as_json().get("restart_required", ())
            peer = await FakePeer.connect(alone.port("m1"), pki, "m2", server_name="m1")
            try:
                await wait_until(lambda: "m2" in m1.node.connected_names,
                                 what="m2 connected")
                sched = m1.node.checks.scheduler
                owner = sched.owner(f"{host}!alive", m1.node.connected_names,
                                    time.time() + 60)
                # Icinga (and the new m2) give this check to m2; m1 still runs it.
                assert owner == "m2", (owner, sched.zone_endpoints)
            finally:
                await peer.close()
        finally:
            await m1.stop()

    run(main(), timeout=60)
