"""HA masters relaying each other's satellites' results: checkpoints still complete.

sat1 sends to master1, sat2 to master2, and each master relays what it got to its
partner. A node confirms a peer only positions of a saved checkpoint, and a checkpoint
waited for every connection with relayed frames unconfirmed: master1's waited for
master2 to confirm sat1's results, master2's for master1 to confirm sat2's, and neither
ever did (found by review, with real nodes). While a checkpoint waits for one connection
only, that peer's own position is now confirmed already (``Receipts._save_part``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.chainsim import kill_node, rounds, start_cluster, stop_all
from tests.nodeutil import check_result

NAMES = ("sat1", "sat2", "master1", "master2")


@pytest.fixture
def ha(tmp_path: Path):
    loop = asyncio.new_event_loop()
    sims, links = start_cluster(
        tmp_path, loop, [("master", ["master1", "master2"], None),
                         ("sat", ["sat1"], "master"), ("sat2", ["sat2"], "master")],
        {"sat1": ("sat1", "master1"), "sat2": ("sat2", "master2"),
         "ha": ("master1", "master2")})
    yield sims, links
    stop_all(sims, loop)


def _produce(sims, i: int) -> list[str]:
    out = []
    for sat, prefix in (("sat1", "a"), ("sat2", "b")):
        service = f"{prefix}{i}"
        assert sims[sat].node.originate("event::CheckResult",
                                        check_result(sat, service, service))
        out.append(service)
    return out


def _traffic(sims, links, results: int, each: int) -> list[str]:
    """``results`` results from each satellite, ``each`` rounds of periodic work after each."""
    produced = []
    for i in range(results):
        produced += _produce(sims, i)
        rounds(sims.values(), links.values(), each)
    return produced


def test_checkpoints_complete_and_every_result_reaches_both_masters(ha) -> None:
    sims, links = ha
    produced = _traffic(sims, links, 4, 3)
    rounds(sims.values(), links.values(), 6)
    for name in NAMES:
        receipts = sims[name].node.receipts
        assert not receipts._pending, f"{name}: checkpoints still waiting"  # noqa: SLF001
    for master in ("master1", "master2"):
        assert sims[master].node.receipts.saves >= 1
        got = Counter(s for _, s in sims[master].delivered[-1])
        assert got == Counter(produced), (master, got)
    for link in links.values():          # and everything was confirmed both ways
        assert len(link.conn_a.ledger) == 0 and len(link.conn_b.ledger) == 0


def test_a_master_killed_amid_the_relaying_loses_and_doubles_nothing(ha) -> None:
    sims, links = ha
    produced = _traffic(sims, links, 3, 2)
    produced += _produce(sims, 3)
    links["sat1"].deliver(True, 1000)    # master1 has a3, not yet passed on or confirmed
    kill_node(sims["master1"], links.values())
    produced += _produce(sims, 4)
    rounds(sims.values(), links.values(), 3)
    sims["master1"].start()
    links["sat1"].connect()
    links["ha"].connect()
    rounds(sims.values(), links.values(), 12)
    for master in ("master1", "master2"):
        got = Counter(s for _, s in sims[master].durable_deliveries())
        assert got == Counter(produced), (master, got)
