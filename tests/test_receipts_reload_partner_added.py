"""A reload that gives the node an HA partner: what its children sent it directly
before the reload went through the single-path watermark, which records neither the
hop nor the stamp (``Node.on_message``, not ``local_zone_ha``). After the reload the
per-hop rule (``Receipts.accept``) decides; once the child's newer message has come
directly, the partner's relay of an older one the node processed before the reload is
"from another hop, not among the recent stamps": processed a second time.

The partner gets that older message when the child replays its zone log to it (the
child's reload added the partner too; its log keeps the records until every endpoint of
the zone confirmed them). The control test (HA from the start) shows the same sequence
is deduplicated when no reload is involved."""
from __future__ import annotations

import asyncio
import time

from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

NAMES = ["m", "p", "x"]
HA = [("master", ["m", "p"], None), ("sat", ["x"], "master")]
ALONE = [("master", ["m"], None), ("sat", ["x"], "master")]
HOSTS = '[objects.hosts]\nhx = "sat"\n'


async def scenario(tmp_path, add_partner_by_reload: bool) -> int:
    pki = make_test_pki(tmp_path / "pki", NAMES)
    spec = ClusterSpec(tmp_path, pki, ALONE if add_partner_by_reload else HA)
    svc = await spec.start("m", extra=HOSTS)
    node = svc.node
    port = spec.port("m")
    peers = []
    try:
        sat = await FakePeer.connect(port, pki, "x", server_name="m")
        peers.append(sat)
        await wait_until(lambda: "x" in node.connected_names, what="x")
        t1 = time.time() - 5.0
        sat.send("event::CheckResult", check_result("hx", "r1", "r1", now=t1), ts=t1)
        await wait_until(lambda: node.check_results_received == 1, what="r1 processed")
        if add_partner_by_reload:
            ClusterSpec(tmp_path, pki, HA, ports=spec.ports).config("m", extra=HOSTS)
            record = await svc.reload("test")
            assert record.result == "ok" and record.sessions_closed == [], record.as_json()
        t2 = t1 + 1.0
        sat.send("event::CheckResult", check_result("hx", "r2", "r2", now=t2), ts=t2)
        await wait_until(lambda: node.check_results_received == 2, what="r2 processed")
        # The partner got r1 from x's replay of its zone log and relays it to us.
        partner = await FakePeer.connect(port, pki, "p", server_name="m")
        peers.append(partner)
        await wait_until(lambda: "p" in node.connected_names, what="p")
        partner.send("event::CheckResult", check_result("hx", "r1", "r1", now=t1),
                     ts=time.time(), routerOrigin=["x", t1])
        await asyncio.sleep(0.5)
        return node.check_results_received
    finally:
        for p in peers:
            await p.close()
        await svc.stop()


def test_control_ha_from_the_start_drops_the_relayed_duplicate(tmp_path, run):
    assert run(scenario(tmp_path, add_partner_by_reload=False)) == 2


def test_relay_of_a_result_processed_before_the_partner_was_added_is_dropped(tmp_path, run):
    processed = run(scenario(tmp_path, add_partner_by_reload=True))
    assert processed == 2, (
        f"{processed} check results processed for 2 distinct ones: r1, processed directly "
        f"before a reload added the HA partner, was processed again when the partner "
        f"relayed it (the single-path watermark had not remembered its stamp)")
