"""HA masters: a satellite's own results reach master2 directly and relayed by master1.

A message without ``routerOrigin`` (the sender's own: its checks, or any Icinga peer's)
moves the sender's watermark on the direct path. When the HA partner later relays an
older message of the same sender, one master2 never had, master2 must process it; when
it relays one master2 already processed directly, master2 must drop it. Found by review:
the direct path recorded neither the hop nor the stamp, so the first was dropped as a
replay and lost for good (sat1 never sends it to master2 again; master1 confirmed it).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.chainsim import kill_node, rounds, start_cluster, stop_all
from tests.nodeutil import check_result


@pytest.fixture
def ha(tmp_path: Path):
    loop = asyncio.new_event_loop()
    sims, links = start_cluster(
        tmp_path, loop, [("master", ["master1", "master2"], None), ("sat", ["sat1"], "master")],
        {"s-m1": ("sat1", "master1"), "s-m2": ("sat1", "master2"),
         "m1-m2": ("master1", "master2")}, connect=False)
    yield sims, links
    stop_all(sims, loop)


def test_an_older_result_relayed_by_the_partner_after_newer_direct_ones_is_kept(ha) -> None:
    sims, links = ha
    sat, m1, m2 = sims["sat1"], sims["master1"], sims["master2"]
    for link in links.values():
        link.connect()
    assert sat.node.originate("event::CheckResult", check_result("sat1", "r3", "r3"))
    assert links["s-m1"].deliver(True, 1000) == 1   # master1 consumes r3, queues it for master2
    kill_node(m1, links.values())                   # before it passes r3 on
    for service in ("r4", "r5"):                     # now straight to master2
        assert sat.node.originate("event::CheckResult", check_result("sat1", service, service))
    rounds(sims.values(), links.values(), 3)
    m1.start()
    links["s-m1"].connect()
    links["m1-m2"].connect()
    rounds(sims.values(), links.values(), 10)
    got = Counter(service for _, service in m2.durable_deliveries())
    assert got == Counter({"r3": 1, "r4": 1, "r5": 1}), got


def test_a_result_master2_had_directly_is_dropped_when_the_partner_relays_it(ha) -> None:
    sims, links = ha
    sat, m2 = sims["sat1"], sims["master2"]
    links["s-m2"].connect()
    links["m1-m2"].connect()
    assert sat.node.originate("event::CheckResult", check_result("sat1", "r1", "r1"))
    assert links["s-m2"].deliver(True, 1000) == 1    # master2 processes r1, confirms nothing
    links["s-m2"].drop()                             # sat1 fails over to master1 ...
    links["s-m1"].connect()                          # ... and replays r1 there
    rounds(sims.values(), links.values(), 10)
    got = Counter(service for _, service in m2.durable_deliveries())
    assert got == Counter({"r1": 1}), got
    assert Counter(s for _, s in sims["master1"].durable_deliveries()) == Counter({"r1": 1})
