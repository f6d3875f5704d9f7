"""Cases a review of the checkpoint changes found (each lost a result in a first version
of them; reproduced with real nodes, tests/chainsim.py).

- An origin's saved position covers every older message of that origin, whichever hop
  brought it: saving it in a part of a checkpoint (before the connection the checkpoint
  waits for confirmed) lost an older message still unconfirmed there, across two
  checkpoints and within one.
- The answer to a node's own remote check (``command_endpoint``) is sent on as the
  node's own message: a checkpoint must wait for it like for anything relayed.
- A relay's checkpoints wait seconds for the next hop; its own stamp must still be saved
  every interval, or a restart with the clock behind loses what follows.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

import router.node.core as core
from router.config import CheckSpec
from router.features.checks import LocalChecks
from router.features.scheduler import Scheduler
from router.protocol import jsonrpc
from tests.chainsim import SteppedClock, kill_node, rounds, start_chain, start_cluster, stop_all
from tests.nodeutil import check_result

NAMES = ("agent1", "sat1", "master1", "master2")


@pytest.fixture
def ha(tmp_path: Path):
    """agent1 -> sat1 -> the HA pair master1 and master2, every link up."""
    loop = asyncio.new_event_loop()
    sims, links = start_cluster(
        tmp_path, loop, [("master", ["master1", "master2"], None),
                         ("sat", ["sat1"], "master"), ("agent1", ["agent1"], "sat")],
        {"a-s": ("agent1", "sat1"), "s-m1": ("sat1", "master1"),
         "s-m2": ("sat1", "master2"), "m1-m2": ("master1", "master2")})
    yield sims, links
    stop_all(sims, loop)


def _restart_and_heal(sims, links, master: str) -> None:
    kill_node(sims[master], links.values())
    sims[master].start()
    for link in links.values():
        if not link.up:
            link.connect()
    rounds(sims.values(), links.values(), 12)


def test_an_older_message_by_another_hop_in_an_earlier_checkpoint_is_not_lost(ha) -> None:
    sims, links = ha
    sat, m1, m2 = sims["sat1"], sims["master1"], sims["master2"]
    assert sat.node.originate("event::CheckResult", check_result("sat1", "r1", "r1"))
    assert links["s-m1"].deliver(True, 1000) == 1   # master1 has r1, queued for master2
    m1.checkpoint()                                  # checkpoint 1 waits for master2
    links["s-m1"].drop()                             # sat1 fails over to master2
    sat.commit()
    assert sat.node.originate("event::CheckResult", check_result("sat1", "r2", "r2"))
    assert links["s-m2"].deliver(True, 1000) == 1    # master2 has r2, relays it
    assert links["m1-m2"].deliver(False, 1000) == 1  # master1: r2 by master2
    m1.commit()
    m1.checkpoint()                                  # checkpoint 2: sat1@r2, by master2
    _restart_and_heal(sims, links, "master1")        # r1 was only in master1's queue
    assert Counter(s for _, s in m2.durable_deliveries()) == Counter({"r1": 1, "r2": 1})


def test_an_older_message_by_another_hop_in_the_same_checkpoint_is_not_lost(ha) -> None:
    sims, links = ha
    agent, sat, m1, m2 = (sims[name] for name in NAMES)
    assert agent.node.originate("event::CheckResult", check_result("agent1", "r1", "r1"))
    assert links["a-s"].deliver(True, 10) == 1      # sat1 queues r1 for master1 ...
    links["s-m1"].drop()                            # ... which it never gets: sat1's log
    sat.commit()
    assert agent.node.originate("event::CheckResult", check_result("agent1", "r2", "r2"))
    assert links["a-s"].deliver(True, 10) == 1      # sat1 -> master2 now
    assert links["s-m2"].deliver(True, 10) == 1     # master2 has r2, relays it
    assert links["m1-m2"].deliver(False, 10) == 1   # master1: agent1@r2 by master2
    links["s-m1"].connect()                         # sat1 replays r1 to master1: older,
    assert links["s-m1"].deliver(True, 10) == 1     # another hop, processed, for master2
    m1.commit()
    m1.checkpoint()
    _restart_and_heal(sims, links, "master1")       # r1 was only in master1's queue
    assert Counter(s for _, s in m2.durable_deliveries()) == Counter({"r1": 1, "r2": 1})


class AnswersAsOwnChecks:
    """What ``LocalChecks`` does with the answer to a ``command_endpoint`` check: takes
    it, and sends it on as the node's own result."""

    def __init__(self, node) -> None:
        self.node = node

    def accept_result(self, endpoint: str, params: dict) -> bool:
        if endpoint != "agent1":
            return False
        self.node.originate("event::CheckResult", dict(params))
        return True


def test_a_command_endpoint_answer_sent_on_is_waited_for(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    sims, links = start_chain(tmp_path, loop)
    agent, sat, master = sims.values()
    try:
        sat.node.checks = AnswersAsOwnChecks(sat.node)
        assert agent.node.originate("event::CheckResult", check_result("agent1", "r1", "r1"))
        assert links[0].deliver(True, 10) == 1   # sat1 takes the answer, sends it on
        sat.commit()
        sat.checkpoint()
        sat.confirm()
        links[0].deliver(False, 10)              # whatever sat1 confirmed reaches agent1
        kill_node(sat, links)                    # r1 was only in sat1's queue to master
        sat.start()
        sat.node.checks = AnswersAsOwnChecks(sat.node)
        for link in links:
            link.connect()
        rounds(sims.values(), links, 10)
        assert Counter(s for _, s in master.durable_deliveries()) == Counter({"r1": 1})
    finally:
        for sim in sims.values():
            sim.stop()
        loop.close()


def test_a_relay_saves_its_stamp_while_its_checkpoints_wait(tmp_path: Path,
                                                            monkeypatch) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(core, "time", clock)
    loop = asyncio.new_event_loop()
    sims, links = start_chain(tmp_path, loop)
    agent, sat, master = sims.values()
    try:
        assert agent.node.originate("event::CheckResult", check_result("agent1", "r1", "r1"))
        rounds(sims.values(), links, 5)
        for i, service in enumerate(("r2", "r3")):   # 3 s of relaying, nothing confirmed
            clock.offset = 1.5 * (i + 1)
            assert agent.node.originate("event::CheckResult",
                                        check_result("agent1", service, service))
            links[0].deliver(True, 10)
            links[1].deliver(True, 10)
            sat.commit()
            sat.checkpoint()
        kill_node(sat, links)
        clock.offset = -100.0                         # restarted with the clock behind
        sat.start()
        for link in links:
            link.connect()
        assert agent.node.originate("event::CheckResult", check_result("agent1", "r4", "r4"))
        rounds(sims.values(), links, 5)
        clock.offset = 10.0                           # the clock catches up
        rounds(sims.values(), links, 5)
        got = [service for _, service in master.durable_deliveries()]
        assert got == ["r1", "r2", "r3", "r4"], got
    finally:
        for sim in sims.values():
            sim.stop()
        loop.close()


def _move_one(src, dst, dst_node) -> None:
    frames, _ = src.queue.take(1, src.ledger)
    for frame in frames:
        dst_node.on_message(dst, jsonrpc.parse_message(frame[frame.index(b":") + 1:-1]))


@pytest.mark.parametrize("part", [False, True], ids=["full", "part"])
@pytest.mark.parametrize("window", [False, True], ids=["settled", "window"])
def test_a_command_endpoint_answer_is_sent_on_in_the_step_that_read_it(
        tmp_path: Path, window: bool, part: bool) -> None:
    """The real LocalChecks: a checkpoint right after the answer was read (the 250 ms
    timer due in the same loop iteration) must find it queued for the master."""
    loop = asyncio.new_event_loop()
    sims, links = start_chain(tmp_path, loop)
    agent, sat, master = sims.values()
    a_s, s_m = links
    try:
        spec = CheckSpec(host="agent1", service="disk", command="dummy",
                         command_endpoint="agent1")
        sched = Scheduler([spec], local_endpoint="sat1", zone_endpoints=("sat1",),
                          started=0.0)
        checks = LocalChecks(sat.node, sched, None)
        sat.node.checks = checks
        task = loop.create_task(checks._run(spec))
        sat.settle()
        sat.run(asyncio.sleep(0.01))
        assert a_s.conn_b.queue.messages == 1            # ExecuteCommand to agent1
        a_s.conn_b.queue.take(1, a_s.conn_b.ledger)     # (the agent's executor is faked)
        if part:
            # a logged frame from sat1 to agent1, unconfirmed: the checkpoint waits for
            # agent1 only, so _save_part confirms agent1's position
            assert master.node.originate("event::SetNextCheck",
                                         {"host": "agent1", "next_check": 1.5e9})
            s_m.deliver(False, 10)
            assert a_s.conn_b.queue.messages == 1
            a_s.deliver(False, 10)                       # written to agent1, not confirmed
            sat.commit()
            sat.checkpoint()
            assert sat.node.receipts._pending          # waits for agent1
        # agent1 answers
        assert agent.node.originate("event::CheckResult",
                                    check_result("agent1", "disk", "answer"))
        _move_one(a_s.conn_a, a_s.conn_b, sat.node)      # sat1 reads the answer ...
        if not window:
            sat.settle()                                 # ... and its task originates
        sat.commit()
        sat.checkpoint()                                 # the 250 ms timer, same iteration
        assert task.done()
        if window:      # the answer is on its way to the master already
            assert s_m.conn_a.queue.messages or len(s_m.conn_a.ledger)
        sat.confirm()
        a_s.deliver(False, 10)                           # agent1 gets the confirmation
        agent.commit()
        kill_node(sat, links)                            # the result is in sat1's queue only
        sat.start()
        for link in links:
            link.connect()
        rounds(sims.values(), links, 10)
        got = Counter(s for _, s in master.durable_deliveries())
        assert got == Counter({"disk": 1}), got
    finally:
        for sim in sims.values():
            sim.stop()
        loop.close()
