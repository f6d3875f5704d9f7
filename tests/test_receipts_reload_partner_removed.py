"""A reload that removes the HA partner switches the node from the per-hop rule
(``Receipts.accept``) to the single-path watermark for its children's own messages, but
keeps the watermark the partner's relays raised: an older message the child sends
directly afterwards (the replay of one its connection to us lost, or simply one that
was on its way) is taken for a duplicate, dropped and confirmed: lost for good.

Without the reload the same message is processed (the hop that brought the newest was
the partner, and the stamp is not among the recent ones): shown by the control test."""
from __future__ import annotations

import asyncio
import time

from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

NAMES = ["m", "p", "x"]
HA = [("master", ["m", "p"], None), ("sat", ["x"], "master")]
ALONE = [("master", ["m"], None), ("sat", ["x"], "master")]
HOSTS = '[objects.hosts]\nhx = "sat"\n'


async def scenario(tmp_path, remove_partner: bool):
    pki = make_test_pki(tmp_path / "pki", NAMES)
    spec = ClusterSpec(tmp_path, pki, HA)
    svc = await spec.start("m", extra=HOSTS)
    node = svc.node
    port = spec.port("m")
    peers = []
    try:
        partner = await FakePeer.connect(port, pki, "p", server_name="m")
        sat = await FakePeer.connect(port, pki, "x", server_name="m")
        peers += [partner, sat]
        await wait_until(lambda: {"p", "x"} <= node.connected_names, what="sessions")
        t9 = time.time() - 5.0
        t10 = t9 + 1.0
        # x sent its result "new" (t10) to p, which relays it to us with its origin.
        partner.send("event::CheckResult", check_result("hx", "new", "new", now=t10),
                     ts=time.time(), routerOrigin=["x", t10])
        await wait_until(lambda: node.results.get("hx", "new") is not None,
                         what="the relayed result")
        if remove_partner:
            ClusterSpec(tmp_path, pki, ALONE, ports=spec.ports).config("m", extra=HOSTS)
            record = await svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["p"], \
                record.as_json()
        # x's older result "old" (t9), which it had sent to us and never had confirmed,
        # comes now (x replays it to us; p never had it).
        sat.send("event::CheckResult", check_result("hx", "old", "old", now=t9), ts=t9)
        await asyncio.sleep(0.5)
        return node.results.get("hx", "old") is not None, \
            node.endpoint_stats("x").duplicates_dropped
    finally:
        for p in peers:
            await p.close()
        await svc.stop()


def test_control_without_reload_the_older_direct_result_is_processed(tmp_path, run):
    processed, dropped = run(scenario(tmp_path, remove_partner=False))
    assert processed and dropped == 0


def test_older_direct_result_after_the_partner_is_removed_is_processed(tmp_path, run):
    processed, dropped = run(scenario(tmp_path, remove_partner=True))
    assert processed, (
        f"x's result 'old' (never processed here, never seen by the removed partner) was "
        f"dropped as a duplicate ({dropped} dropped) after a reload removed the HA partner: "
        f"the single-path watermark still holds the stamp the partner's relay raised")
