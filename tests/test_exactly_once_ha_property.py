"""Property: HA masters that relay each other's satellites' results deliver each result
to both masters exactly once, through any interleaving of deliveries, confirmations,
checkpoints, disconnects and kill -9 of either master.

sat1 -> master1, sat2 -> master2, master1 <-> master2 (``tests/chainsim.py``: real nodes,
simulated links). Each master relays what a satellite sent it to its partner, so each
waits for the other's confirmations while the other waits for its own: the case that
held every checkpoint for good before ``Receipts._save_part`` (issue 21).
"""

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

NAMES = ("sat1", "sat2", "master1", "master2")
MASTERS = ("master1", "master2")
LINKS = ("sat1", "sat2", "ha")


class HAMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="ha-"))
        self.spec = ClusterSpec(self.directory, shared_pki(NAMES), [
            ("master", ["master1", "master2"], None), ("sat", ["sat1"], "master"),
            ("sat2", ["sat2"], "master")])
        self.loop = asyncio.new_event_loop()
        self.nodes = {name: SimNode(self.spec, name, self.loop) for name in NAMES}
        for sim in self.nodes.values():
            sim.start()
        self.links = {"sat1": SimLink(self.nodes["sat1"], self.nodes["master1"]),
                      "sat2": SimLink(self.nodes["sat2"], self.nodes["master2"]),
                      "ha": SimLink(self.nodes["master1"], self.nodes["master2"])}
        for link in self.links.values():
            link.connect()
        self.produced: list[str] = []
        self.trace: list[str] = []

    @rule(sat=st.sampled_from(["sat1", "sat2"]), count=st.integers(1, 4))
    @traced
    def produce(self, sat: str, count: int) -> None:
        assert self.nodes[sat].node is not None
        produce_results(self.nodes[sat], count, self.produced)

    @rule(link=st.sampled_from(LINKS), count=st.sampled_from([1, 3, 1000]),
          forward=st.booleans(), ack=st.sampled_from(["none", "confirm", "checkpoint"]))
    @traced
    def deliver(self, link: str, count: int, forward: bool, ack: str) -> None:
        deliver_and_ack(self.links[link], forward, count, ack, commit=False)

    @rule(name=st.sampled_from(NAMES))
    @traced
    def checkpoint(self, name: str) -> None:
        self.nodes[name].checkpoint()

    @rule(link=st.sampled_from(LINKS))
    @traced
    def drop(self, link: str) -> None:
        self.links[link].drop()

    @rule(name=st.sampled_from(MASTERS))
    @traced
    def kill(self, name: str) -> None:
        kill_node(self.nodes[name], self.links.values())

    @rule(name=st.sampled_from(MASTERS))
    @traced
    def restart(self, name: str) -> None:
        if self.nodes[name].node is None:
            self.nodes[name].start()

    @invariant()
    def never_twice(self) -> None:
        for master in MASTERS:
            durable = self.nodes[master].durable_deliveries()
            twice = [key for key, n in Counter(durable).items() if n > 1]
            assert not twice, f"{master}: delivered more than once: {twice[:10]}"

    def heal(self) -> None:
        heal(self.nodes.values(), self.links.values())

    def teardown(self) -> None:
        try:
            self.heal()
            for master in MASTERS:
                twice, lost, _ = delivery_faults(self.nodes[master], self.produced)
                if os.environ.get("ROUTER_CHAIN_TRACE"):
                    print("\n".join(self.trace), "\n---")
                assert not twice, f"{master}: more than once: {twice[:10]}; {self.trace}"
                assert not lost, f"{master}: never delivered: {lost[:10]}; {self.trace}"
        finally:
            shut_down(self.nodes.values(), self.loop, self.directory)


HAMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("ROUTER_CHAIN_EXAMPLES", "60")),
    stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_ha_masters_deliver_exactly_once = pytest.mark.slow(HAMachine.TestCase)
