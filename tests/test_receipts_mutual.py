"""Checkpoints complete while two of our nodes send logged messages both ways.

A node confirms a peer only positions of a saved checkpoint, and a checkpoint waited for
every connection with unconfirmed logged frames. With results going up and a next-check
update (or a command) coming down at the same time, each end waited for the other's
confirmation of its own message: no checkpoint was ever saved, nothing was confirmed,
the ledgers and the senders' logs grew, and a ``kill -9`` handed everything processed
since to the restarted node's features again. While a checkpoint waits for one
connection only, that peer's own position is now confirmed already
(``Receipts._save_part``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.chainsim import SimLink, SimNode, chain_spec
from tests.nodeutil import check_result


def test_logged_messages_both_ways_do_not_hold_the_checkpoints(tmp_path: Path) -> None:
    names = ("agent1", "sat1", "master")
    spec = chain_spec(tmp_path)
    loop = asyncio.new_event_loop()
    agent, sat, master = (SimNode(spec, name, loop) for name in names)
    try:
        for sim in (agent, sat, master):
            sim.start()
        down, up = SimLink(agent, sat), SimLink(sat, master)
        down.connect()
        up.connect()
        for i in range(3):
            # sat1's own message down and the master's (relayed by sat1) while results go up
            for sender in (sat, master):
                assert sender.node.originate("event::SetNextCheck", {
                    "host": "agent1", "service": f"s{i}", "next_check": time.time() + 60})
            assert agent.node.originate("event::CheckResult",
                                        check_result("agent1", f"s{i}", "OK"))
        for _ in range(6):
            for link in (down, up):
                link.deliver(True, 1000)
                link.deliver(False, 1000)
            for sim in (agent, sat, master):
                sim.commit()
                sim.checkpoint()
                sim.confirm()
        for sim in (agent, sat, master):
            receipts = sim.node.receipts
            assert receipts.saves >= 1, f"{sim.name}: no checkpoint saved"
            assert not receipts._pending, f"{sim.name}: checkpoints still waiting"  # noqa: SLF001
        # and the confirmations went through: nothing left unconfirmed on either link
        for conn in (down.conn_a, down.conn_b, up.conn_a, up.conn_b):
            assert len(conn.ledger) == 0
        assert [s for _, s in master.delivered[-1]] == ["s0", "s1", "s2"]
    finally:
        for sim in (agent, sat, master):
            sim.stop()
        loop.close()


def test_a_position_a_part_confirmed_holds_after_a_kill_before_the_peer_heard_it(
        tmp_path: Path) -> None:
    """A part confirms sat1's hop position while the master's checkpoint waits for sat1
    (its next-check update is unconfirmed there). Killed before sat1 heard that
    confirmation, the master had not saved it either: sat1 sent r1 again and the
    restarted master processed it a second time (its writers too). The hop position is
    now saved with the part, before it is confirmed (review)."""
    from tests.chainsim import heal, kill_node
    spec = chain_spec(tmp_path)
    loop = asyncio.new_event_loop()
    agent, sat, master = (SimNode(spec, name, loop) for name in ("agent1", "sat1", "master"))
    try:
        for sim in (agent, sat, master):
            sim.start()
        down, up = SimLink(agent, sat), SimLink(sat, master)
        down.connect()
        up.connect()
        assert master.node.originate("event::SetNextCheck", {
            "host": "agent1", "service": "s0", "next_check": time.time() + 60})
        assert sat.node.originate("event::CheckResult", check_result("sat1", "r1", "OK"))
        up.deliver(True, 1000)                 # r1 reaches the master ...
        up.deliver(False, 1000)                # ... its update reaches sat1, unconfirmed
        master.commit()
        master.checkpoint()                    # waits for sat1 only: a part for sat1
        master.confirm()                       # queued, never delivered:
        assert master.node.receipts.saves >= 1
        kill_node(master, [down, up])
        heal([agent, sat, master], [down, up])
        got = [s for _, s in master.durable_deliveries()]
        assert got.count("r1") == 1, got
    finally:
        for sim in (agent, sat, master):
            sim.stop()
        loop.close()
