"""A pending certificate request ping-pongs for ever between the two satellites of an HA zone.

A satellite without the CA key stores a request and forwards it with
``Enrollment._forward`` -> ``host.originate(REQUEST, ...)`` (router/node/enrollment.py:
589-596), which routes "to our zone and its ancestors" with no origin: the zone peer the
request came from gets it back. The peer does the same (its ``_pending`` forwards again,
enrollment.py:580-581), so a request that is still pending (no ticket, the signer down, an
Icinga signer leaving it pending) bounces between sat1 and sat2 as fast as the link allows,
each time a file rewrite, a CPU assessment in the worker thread and a log line, on both
satellites, until it is signed. The same happens to a satellite's own renewal (it asks its
HA peer, owncert._ask to peers_and_parents). Icinga does not relay a message back to the
zone it came from (ApiListener::RelayMessageOne: "Don't relay messages back to the zone
which we got the message from"), so it forwards each request once.
"""

from __future__ import annotations

import asyncio

from router import pki as pkilib
from tests.conftest import run  # noqa: F401 - the project's fixture (both loops)
from tests.nodeutil import ClusterSpec, metrics_text, wait_until
from tests.pkiutil import make_test_pki
from tests.test_enrollment import anonymous, ask, metric


def test_pending_request_is_not_bounced_between_ha_satellites(tmp_path, run):
    test_pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "sat2"])
    # the master zone exists but is not up (the signer is down, or leaves it pending)
    spec = ClusterSpec(tmp_path, test_pki, [("master", ["master"], None),
                                            ("sat", ["sat1", "sat2"], "master")],
                       dialled={"sat1"})
    key = pkilib.generate_key("ec")
    cert = pkilib.self_signed_certificate(key, "newagent")

    async def main():
        sat1 = await spec.start("sat1")
        sat2 = await spec.start("sat2")
        try:
            await wait_until(lambda: "sat2" in sat1.node.connected_names
                             and "sat1" in sat2.node.connected_names, what="HA zone up")
            peer = await anonymous(spec.port("sat1"), test_pki)
            result = await ask(peer, cert)          # no ticket: pending
            assert result["status_code"] == 2, result
            await asyncio.sleep(2.0)
            counts = {}
            for name, node in (("sat1", sat1), ("sat2", sat2)):
                text = await metrics_text(node)
                counts[name] = metric(text, "router_csr_requests_total", result="forwarded")
            await peer.close()
            return counts
        finally:
            await sat2.stop()
            await sat1.stop()

    counts = run(main())
    assert counts["sat1"] <= 2 and counts["sat2"] <= 2, (
        f"one pending request was stored and forwarded {counts['sat1']:.0f} times by sat1 "
        f"and {counts['sat2']:.0f} times by sat2 within 2 s: each satellite sends it back "
        "to the HA peer it came from (Enrollment._forward -> originate without an origin), "
        "an endless loop while the request is pending")
