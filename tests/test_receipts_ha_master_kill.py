"""A satellite connected to both HA masters, and a ``kill -9`` of a master: the two
windows docs/reliability.md named before the recent origin stamps were saved with the
checkpoints (2026-12-07).

- The masters cut off from each other each get a result of the satellite the other
  does not have; master1 is killed after its checkpoint covered the newer one: after
  the restart its floor dropped master2's relay of the older one (lost on master1).
- A part of a checkpoint confirmed the satellite's position at master1, which died
  before the satellite heard it: the satellite sent the result again to master2, which
  relayed it to the restarted master1, which processed it again.
"""

from __future__ import annotations

from collections import Counter

from tests.chainsim import heal, kill_node
# The HA cluster of a satellite connected to both masters, and its helpers.
from tests.test_receipts_ha_dualhomed import (  # noqa: F401 (ha: a fixture)
    counts, each_master_gets_one, ha, send)


def test_the_older_result_only_the_partner_got_survives_a_kill_9(ha) -> None:
    sims, links = ha
    m1, m2 = sims["master1"], sims["master2"]
    each_master_gets_one(sims, links)
    assert m1.node is not None and m1.node.receipts.saved_through >= 1
    kill_node(m1, links.values())
    heal(sims.values(), links.values())          # master2 relays r0 to master1
    assert counts(m1) == Counter({"r0": 1, "r1": 1}), counts(m1)
    assert counts(m2) == Counter({"r0": 1, "r1": 1}), counts(m2)


def test_a_part_confirmed_before_a_kill_9_holds_against_the_partners_relay(ha) -> None:
    sims, links = ha
    sat, m1, m2 = sims["sat1"], sims["master1"], sims["master2"]
    assert m1.node is not None
    links["m1-m2"].drop()
    # master1 has a frame for sat1 that sat1 has not confirmed: the checkpoint after r
    # waits for that one connection, and a part confirms sat1's position alone.
    assert m1.node.originate("event::SetNextCheck", {"host": "sat1", "next_check": 1.0e9})
    assert links["s-m1"].deliver(False, 10) == 1
    send(sat, "r")
    assert links["s-m1"].deliver(True, 10) == 1      # master1 processes r
    m1.commit()
    m1.checkpoint()
    assert m1.parts[-1] and m1.parts[-1][0][0] == "sat1", m1.parts
    m1.confirm()                                     # never reaches sat1
    kill_node(m1, links.values())
    sat.commit()
    sat.settle()
    links["s-m2"].drop()                             # (r is in sat1's zone log: a
    links["s-m2"].connect()                          # reconnect replays it)
    sat.settle()
    assert links["s-m2"].deliver(True, 10) == 1      # sat1 sends r again, to master2
    assert counts(m2) == Counter({"r": 1}), counts(m2)
    m1.start()
    links["m1-m2"].connect()                         # master2 relays r to master1
    heal(sims.values(), links.values())
    assert counts(m1) == Counter({"r": 1}), counts(m1)
    assert counts(m2) == Counter({"r": 1}), counts(m2)


def test_the_dual_homed_machines_trace_with_a_master_kill() -> None:
    """The shrunk trace tests/test_exactly_once_dualhomed_property.py found on the code
    before (60 steps, about 1 000 examples): master2 processed agent1's result from sat1,
    a part confirmed it, master2 was killed; healed, master2 had it twice."""
    from tests.test_exactly_once_dualhomed_property import DualHomed
    machine = DualHomed()
    try:
        machine.checkpoint(name="agent1")
        machine.kill(name="master1")
        machine.restart(name="sat1")
        machine.produce(count=2, who="agent1")
        machine.deliver(ack="none", count=2, forward=True, link="a-s")
        machine.deliver(ack="checkpoint", count=1, forward=True, link="s-m2")
        machine.deliver(ack="none", count=1, forward=True, link="s-m2")
        machine.checkpoint(name="master2")
        machine.kill(name="master2")
        machine.never_twice()
    finally:
        machine.teardown()
