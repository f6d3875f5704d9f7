"""Exactly once with a satellite connected to both HA masters (agent1 -> sat1 ->
{master1, master2}, the masters relaying to each other), as a hypothesis state machine:
drops (with frames written but lost in flight or not), partial deliveries either way,
confirmations and checkpoints at any time, and kill -9 of any of the three nodes. After
healing, every result reaches both masters exactly once.

Written by a review helper; it found a fault fixed in d51d341 and, with master kills,
the two windows closed by saving the recent origin stamps with the checkpoints (their
scripted cases: tests/test_receipts_ha_master_kill.py). It did not find the
out-of-order drain and the older direct result on the code before d51d341 in 1 000
examples: those are tests/test_receipts_ha_dualhomed.py. ``ROUTER_CHAIN_EXAMPLES`` sets
the examples (default 60), ``ROUTER_CHAIN_STEPS`` the steps per example (default 30; the
master-kill windows took 60 steps and about 1 000 examples to find)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.chainsim import (SimLink, SimNode, deliver_and_ack, delivery_faults, heal,
                            kill_node, produce_results, shared_pki, shut_down, traced)
from tests.nodeutil import ClusterSpec

NAMES = ("agent1", "sat1", "master1", "master2")
MASTERS = ("master1", "master2")
LINKS = ("a-s", "s-m1", "s-m2", "m1-m2")
# Only agent1 produces: a result made on a node killed before its own log committed it
# existed only in the dead process (documented).
PRODUCERS = ["agent1"]
KILLABLE = ["sat1", "master1", "master2"]


class DualHomed(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="dualhomed-"))
        self.spec = ClusterSpec(self.directory, shared_pki(NAMES), [
            ("master", ["master1", "master2"], None), ("sat", ["sat1"], "master"),
            ("agent1", ["agent1"], "sat")])
        self.loop = asyncio.new_event_loop()
        self.nodes = {name: SimNode(self.spec, name, self.loop) for name in NAMES}
        for sim in self.nodes.values():
            sim.start()
        n = self.nodes
        self.links = {"a-s": SimLink(n["agent1"], n["sat1"]),
                      "s-m1": SimLink(n["sat1"], n["master1"]),
                      "s-m2": SimLink(n["sat1"], n["master2"]),
                      "m1-m2": SimLink(n["master1"], n["master2"])}
        for link in self.links.values():
            link.connect()
        self.produced: list[str] = []
        self.trace: list[str] = []

    @rule(who=st.sampled_from(PRODUCERS), count=st.integers(1, 3))
    @traced
    def produce(self, who: str, count: int) -> None:
        produce_results(self.nodes[who], count, self.produced)

    @rule(link=st.sampled_from(LINKS), count=st.sampled_from([1, 2, 1000]),
          forward=st.booleans(), ack=st.sampled_from(["none", "confirm", "checkpoint"]))
    @traced
    def deliver(self, link: str, count: int, forward: bool, ack: str) -> None:
        deliver_and_ack(self.links[link], forward, count, ack)

    @rule(name=st.sampled_from(NAMES))
    @traced
    def checkpoint(self, name: str) -> None:
        self.nodes[name].commit()
        self.nodes[name].checkpoint()

    @rule(link=st.sampled_from(LINKS), lose=st.sampled_from([0, 1, 1000]))
    @traced
    def drop(self, link: str, lose: int) -> None:
        session = self.links[link]
        if lose and session.up:      # written to the socket, never read by the peer
            for conn in (session.conn_a, session.conn_b):
                if conn.queue is not None and conn.queue.messages:
                    conn.queue.take(lose, conn.ledger)
        session.drop()

    @rule(link=st.sampled_from(LINKS))
    @traced
    def connect(self, link: str) -> None:
        session = self.links[link]
        if not session.up and session.a.alive and session.b.alive:
            session.connect()

    @rule(name=st.sampled_from(KILLABLE))
    @traced
    def kill(self, name: str) -> None:
        kill_node(self.nodes[name], self.links.values())

    @rule(name=st.sampled_from(KILLABLE))
    @traced
    def restart(self, name: str) -> None:
        if self.nodes[name].node is None:
            self.nodes[name].start()

    @invariant()
    def never_twice(self) -> None:
        for master in MASTERS:
            durable = self.nodes[master].durable_deliveries()
            twice = [key for key, n in Counter(durable).items() if n > 1]
            assert not twice, f"{master}: delivered more than once: {twice[:10]}; {self.trace}"

    def teardown(self) -> None:
        try:
            heal(self.nodes.values(), self.links.values())
            for master in MASTERS:
                twice, lost, _ = delivery_faults(self.nodes[master], self.produced)
                assert not twice, f"{master}: more than once: {twice[:10]}; {self.trace}"
                assert not lost, f"{master}: never delivered: {lost[:10]}; {self.trace}"
        finally:
            shut_down(self.nodes.values(), self.loop, self.directory)


DualHomed.TestCase.settings = settings(
    max_examples=int(os.environ.get("ROUTER_CHAIN_EXAMPLES", "60")),
    stateful_step_count=int(os.environ.get("ROUTER_CHAIN_STEPS", "30")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_dual_homed_satellite_exactly_once = pytest.mark.slow(DualHomed.TestCase)
