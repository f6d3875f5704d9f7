"""A satellite connected to both HA masters (the usual HA set-up), the masters relaying
to each other: cases a review found (2026-12-07), each failing on the code before its
fix. The HA property test had each satellite talk to one master only.

- Both of the satellite's connections to the master zone drop: their frames go to one
  zone log in the order the connections dropped, not in ``ts`` order, and a replay in
  seq order made each master drop the older frames as stale: lost on both.
- A result the satellite sends a master directly, older than one the partner already
  relayed to it, was dropped as a replay: lost on both.
- After a ``kill -9`` of a master, the first newer direct message recorded its hop, and
  an older message the restored checkpoint covered then passed when the partner relayed
  it: processed twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chainsim import SimNode, heal, kill_node, start_cluster, stop_all
from tests.nodeutil import check_result


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[tuple[dict[str, SimNode], dict[str, Any]]]:
    loop = asyncio.new_event_loop()
    sims, links = start_cluster(
        tmp_path, loop, [("master", ["master1", "master2"], None), ("sat", ["sat1"], "master")],
        {"s-m1": ("sat1", "master1"), "s-m2": ("sat1", "master2"),
         "m1-m2": ("master1", "master2")})
    yield sims, links
    stop_all(sims, loop)


def send(sat: SimNode, service: str) -> None:
    assert sat.node is not None
    assert sat.node.originate("event::CheckResult", check_result("sat1", service, service))


def counts(sim: SimNode) -> Counter[str]:
    return Counter(service for _, service in sim.durable_deliveries())


BOTH = Counter({"r1": 1, "r2": 1})


@pytest.mark.parametrize("how", ["unsent", "written"])
def test_older_frames_of_the_second_connection_drained_after_newer_ones(ha, how) -> None:
    """unsent: the frames were still in the send queues when the links dropped; written:
    written to the socket (the ledger) and lost in flight."""
    sims, links = ha
    sat, m1, m2 = sims["sat1"], sims["master1"], sims["master2"]
    links["s-m1"].drop()                    # sat1 fails over to master2
    send(sat, "r1")                         # -> master2's queue
    links["s-m1"].connect()                 # master1 back (its log is empty: live at once)
    send(sat, "r2")                         # -> master1, newer than r1
    if how == "written":
        for link in (links["s-m1"], links["s-m2"]):
            link.conn_a.queue.take(10_000, link.conn_a.ledger)
    links["s-m1"].drop()                    # r2 to the zone log first ...
    links["s-m2"].drop()                    # ... then the older r1
    sat.commit()
    assert sat.node is not None
    stamps = [r.ts for r in sat.node.replay.store.read_batch("master", limit=100)]
    assert len(stamps) == 2 and stamps[0] > stamps[1], stamps       # seq order: r2, r1
    assert sat.node.replay.store.zone_disordered("master")
    heal(sims.values(), links.values())
    assert counts(m1) == BOTH and counts(m2) == BOTH, (counts(m1), counts(m2))


@pytest.mark.parametrize("late_by", ["queue", "replay"])
def test_a_direct_result_older_than_one_the_partner_relayed_is_kept(ha, late_by) -> None:
    sims, links = ha
    sat, m1, m2 = sims["sat1"], sims["master1"], sims["master2"]
    links["s-m1"].drop()                        # sat1 fails over to master2
    send(sat, "r1")                             # waits in sat1's queue to master2
    links["s-m1"].connect()                     # master1 back, live at once
    send(sat, "r2")                             # newer, to master1
    assert links["s-m1"].deliver(True, 10) == 1     # master1 processes r2 ...
    assert links["m1-m2"].deliver(True, 10) == 1    # ... and relays it to master2
    if late_by == "replay":
        links["s-m2"].drop()                    # r1 unsent: sat1's zone log
        sat.commit()
        links["s-m2"].connect()                 # replayed to master2
    heal(sims.values(), links.values())
    assert counts(m1) == BOTH and counts(m2) == BOTH, (counts(m1), counts(m2))


def test_a_restored_position_holds_against_the_partners_relay(ha) -> None:
    sims, links = ha
    sat, m1, m2 = sims["sat1"], sims["master1"], sims["master2"]
    send(sat, "r0")
    kill_node(m1, links.values())        # r0 was queued for master1: sat1's zone log
    m1.start()
    links["s-m1"].connect()              # sat1 replays r0 to master1
    assert links["s-m1"].deliver(True, 1) == 1
    m1.commit()
    m1.checkpoint()                      # r0 processed, logged for master2, saved
    assert m1.node is not None and m1.node.receipts.saved_through >= 1
    m1.confirm()                         # (its confirmation never reaches sat1)
    kill_node(m1, links.values())
    kill_node(m2, links.values())
    send(sat, "r1")
    heal(sims.values(), links.values())
    assert counts(m1) == Counter({"r0": 1, "r1": 1}), counts(m1)
    assert counts(m2) == Counter({"r0": 1, "r1": 1}), counts(m2)


def each_master_gets_one(sims: dict[str, SimNode], links: dict[str, Any]) -> None:
    """The masters cut off from each other; r0 reaches master2 only, the newer r1 master1
    only (each logged for the other); both take and save a checkpoint and confirm."""
    sat = sims["sat1"]
    links["s-m1"].drop()                         # sat1 fails over to master2
    send(sat, "r0")
    links["s-m1"].connect()
    send(sat, "r1")
    links["m1-m2"].drop()                        # the masters cut off from each other
    assert links["s-m2"].deliver(True, 10) == 1  # master2: r0, logged for master1
    assert links["s-m1"].deliver(True, 10) == 1  # master1: r1, logged for master2
    for master in ("master1", "master2"):
        sim = sims[master]
        sim.commit()
        sim.checkpoint()
        sim.confirm()


def test_masters_cut_off_from_each_other_each_relay_what_only_they_got(ha) -> None:
    """r0 reaches master2 only, r1 master1 only, while the masters cannot see each other;
    once healed each has both, once (with a kill -9 of master1 in between:
    tests/test_receipts_ha_master_kill.py)."""
    sims, links = ha
    m1, m2 = sims["master1"], sims["master2"]
    each_master_gets_one(sims, links)
    heal(sims.values(), links.values())
    assert counts(m1) == Counter({"r0": 1, "r1": 1}), counts(m1)
    assert counts(m2) == Counter({"r0": 1, "r1": 1}), counts(m2)
