"""HA take-over of a check keeps the state the owner reported.

In Icinga each HA member runs ProcessCheckResult on the owner's results, so the member
that takes a check over continues from the owner's state (a HARD CRITICAL stays HARD). The
scheduler's docstring says the same ("its state stays untouched (the owner's results update
it)"), but nothing feeds a peer's result into the scheduler: the new owner starts from its
own stale state, reports OK -> CRITICAL as a new SOFT problem (vars_before OK) and needs
max_check_attempts - 1 more retries to reach HARD again.
"""

from __future__ import annotations

import time

from router.features.scheduler import sdbm
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki


def test_new_owner_continues_from_the_peers_hard_state(tmp_path, run):
    from router.app import RouterService
    from router.config import parse_config

    pki = make_test_pki(tmp_path / "pki", ["m1", "m2"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["m1", "m2"], None)],
                       timeouts="reconnect_min = 0.1\nreconnect_max = 0.3\n"
                                "ha_cold_start = 3.0")
    # A check m2 owns while connected (sorted [m1, m2], odd hash -> m2).
    host = next(f"h{i}" for i in range(1000) if sdbm(f"h{i}!alive") % 2 == 1)
    checks = ("[[checks]]\n"
              f'host = "{host}"\nservice = "alive"\ncommand = "dummy"\n'
              "interval = 1\nretry_interval = 1\nmax_check_attempts = 3\n"
              "[checks.macros]\ndummy_state = 2\ndummy_text = \"down\"\n")

    async def main():
        text = spec.toml("m1") + checks
        (spec.directory / "m1").mkdir(parents=True, exist_ok=True)
        m1 = RouterService(parse_config(text, str(spec.directory / "m1.toml")))
        started = time.time()
        await m1.start()
        try:
            peer = await FakePeer.connect(spec.port("m1"), pki, "m2", server_name="m1")
            await wait_until(lambda: "m2" in m1.node.connected_names, what="m2 connected")
            # m2, the owner, has it HARD CRITICAL already.
            params = check_result(host, "alive", "down", state=2, source="m2")
            params["cr"]["vars_after"] = {"attempt": 1, "reachable": True, "state": 2,
                                          "state_type": 1}
            peer.send("event::CheckResult", params)

            def stored():
                r = m1.node.results.get(host, "alive")
                return r is not None and r.cr.get("check_source")
            await wait_until(lambda: stored() == "m2", what="m2's result in m1's view")
            assert m1.node.checks.scheduler.scheduled == 0   # m1 has not run it
            await wait_until(lambda: time.time() - started > 3.5, timeout=10,
                             what="cold start over")
            await peer.close()
            await wait_until(lambda: stored() == "m1", timeout=20, what="m1 took over")
            cr = m1.node.results.get(host, "alive").cr
            assert cr["state"] == 2
            assert cr["vars_after"]["state_type"] == 1, (cr["vars_before"], cr["vars_after"])
        finally:
            await m1.stop()

    run(main(), timeout=60)
