"""Reloads that change what the exactly-once machinery relies on (found by review).

- A zone whose replay log is turned on by a reload: its established sessions must keep
  what they are written until confirmed, as a new session would; without a ledger, a
  relay confirmed upstream messages that were still only in the session's socket.
- A reload that moves a zone: a trust decision cached before it (may hop X speak for
  origin Y?) must not outlive it, or X could still raise Y's watermark and silence Y.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from router.config import parse_config
from router.node.reload import apply_to_node, prepare
from router.routing import Topology
from tests.chainsim import SimLink, SimNode, chain_spec


def _without_log_for_master(text: str) -> str:
    marker = '[[endpoints]]\nname = "master"\n'
    assert marker in text
    return text.replace(marker, marker + "log_duration = 0\n")


def test_a_log_turned_on_by_a_reload_covers_the_sessions_already_up(tmp_path: Path) -> None:
    spec = chain_spec(tmp_path)
    loop = asyncio.new_event_loop()
    sat, master = SimNode(spec, "sat1", loop), SimNode(spec, "master", loop)
    text = spec.toml("sat1").replace('log_level = "debug"', 'log_level = "warning"')
    try:
        master.start()
        node = sat.start()
        old = parse_config(_without_log_for_master(text), "sat.toml")
        node.config = old
        node.replay.zones = {}          # as the node would have started with that config
        link = SimLink(sat, master)
        link.connect()
        link.conn_a.ledger = None       # no log for the master's zone: no ledger
        new = parse_config(text, "sat.toml")
        apply_to_node(node, prepare(old, "", new))
        assert node.replay.keeps_log("master")
        assert link.conn_a.ledger is not None
    finally:
        for sim in (sat, master):
            sim.stop()
        loop.close()


def test_trust_decisions_do_not_outlive_a_reload(tmp_path: Path) -> None:
    spec = chain_spec(tmp_path)
    loop = asyncio.new_event_loop()
    master = SimNode(spec, "master", loop)
    try:
        node = master.start()
        receipts = node.receipts
        assert receipts.origin("sat1", ["agent1", 5.5], 9.5) == ("agent1", 5.5)
        # agent1's zone moves from below sat to below master: sat1 no longer speaks for it
        moved = spec.toml("master").replace('name = "agent1"\nendpoints = ["agent1"]\n'
                                            'parent = "sat"',
                                            'name = "agent1"\nendpoints = ["agent1"]\n'
                                            'parent = "master"')
        assert moved != spec.toml("master")
        config = parse_config(moved, "master.toml")
        node.topology = Topology(config.zones, config.endpoints, "master")
        assert receipts.origin("sat1", ["agent1", 5.6], 9.6) == ("sat1", 9.6)
    finally:
        master.stop()
        loop.close()
