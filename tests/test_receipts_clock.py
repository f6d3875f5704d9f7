"""A node restarted with its clock behind the stamps of its last run.

Our peers keep the newest ``ts`` they saw from a node and drop anything older as a
replay. Found by review: after a restart with the wall clock stepped back (an NTP
correction, a VM restored from a snapshot), every new message of the node was stamped
below that and dropped, silently (``stale_dropped``), until the clock caught up; its
frames were then confirmed past and gone. The node now saves its own newest stamp with
its processed positions and stamps above it after a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import router.node.core as core
from tests.chainsim import SimLink, SimNode, SteppedClock, chain_spec, kill_node, rounds
from tests.nodeutil import check_result


@pytest.mark.parametrize("victim", ["agent1", "sat1"])
def test_a_node_killed_and_restarted_with_its_clock_behind_is_not_dropped(
        tmp_path: Path, monkeypatch, victim: str) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(core, "time", clock)
    names = ("agent1", "sat1", "master")
    spec = chain_spec(tmp_path)
    loop = asyncio.new_event_loop()
    sims = {name: SimNode(spec, name, loop) for name in names}
    links = [SimLink(sims["agent1"], sims["sat1"]), SimLink(sims["sat1"], sims["master"])]
    try:
        for sim in sims.values():
            sim.start()
        for link in links:
            link.connect()
        agent = sims["agent1"]
        for service in ("r1", "r2"):
            assert agent.node.originate("event::CheckResult",
                                        check_result("agent1", service, service))
        rounds(sims.values(), links, 5)
        kill_node(sims[victim], links)
        clock.offset = -100.0                  # the clock is 100 s behind at the restart
        sims[victim].start()
        for link in links:
            if not link.up:
                link.connect()
        assert agent.node.originate("event::CheckResult", check_result("agent1", "r3", "r3"))
        rounds(sims.values(), links, 5)
        got = [service for _, service in sims["master"].durable_deliveries()]
        assert got == ["r1", "r2", "r3"], got
        assert sims["master"].node.stale_dropped == 0
        assert sims["sat1"].node.stale_dropped == 0
    finally:
        for sim in sims.values():
            sim.stop()
        loop.close()
