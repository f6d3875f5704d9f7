"""A drained queue resumes the sources it held back a batch at a time (sans sockets).

Releasing every held-back source at once made each of them read once per drain cycle:
with 10 000 agents sending flat out through a satellite, hundreds of megabytes were read,
parsed and coalesced away for every few megabytes the parent's queue could take, and the
satellite read instead of writing to its parent (issue 22, the chain's max). Now a
drained queue releases the oldest sources until their expected reads fill the room below
its high-water mark, and looks again shortly while it is not congested.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from router.config import parse_config
from router.node.core import RELEASE_RECHECK, Node
from router.transport.sendqueue import QueueLimits
from tests.nodeutil import ClusterSpec
from tests.pkiutil import make_test_pki


class Source:
    """A connection that feeds the congested queue: paused and resumed by the node."""

    def __init__(self, name: str, expected_read: int) -> None:
        self.endpoint = name
        self.expected_read = expected_read
        self.blocked_by = 0
        self.blocked_sources = None
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Target(SimpleNamespace):
    """The congested peer (hashable by identity, as connections are)."""

    __hash__ = object.__hash__


@pytest.fixture
def node(tmp_path):
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    (tmp_path / "master").mkdir(parents=True, exist_ok=True)
    config = parse_config(spec.toml("master"), "test.toml")
    loop = asyncio.new_event_loop()
    node = Node(config, loop, server_context=object(),  # type: ignore[arg-type]
                client_context=object())  # type: ignore[arg-type]
    node.queue_limits = QueueLimits(high_bytes=64 * 1024, low_bytes=16 * 1024,
                                    hard_bytes=256 * 1024)
    yield node
    loop.close()


def test_a_drained_queue_releases_its_sources_a_batch_at_a_time(node):
    target = Target(state="open", endpoint="master2", blocked_sources=None,
                             queue=SimpleNamespace(congested=True, bytes=70 * 1024))
    sources = [Source(f"agent{i}", 8192) for i in range(100)]

    async def main():
        for source in sources:
            node._block(source, target)
        assert all(s.paused for s in sources)
        # Drained below low water: room for 64 KiB - 4 KiB of expected reads.
        target.queue.congested, target.queue.bytes = False, 4 * 1024
        node.queue_drained(target)
        running = [s for s in sources if not s.paused]
        assert running == sources[:8]              # the oldest first, 8 x 8 KiB
        # Congested again before the next look: nobody else is released.
        target.queue.congested = True
        await asyncio.sleep(RELEASE_RECHECK * 4)
        assert sum(not s.paused for s in sources) == 8
        target.queue.congested, target.queue.bytes = False, 0
        node.queue_drained(target)
        assert sum(not s.paused for s in sources) == 16
        # Not congested: a batch at every look until all are released.
        for _ in range(40):
            await asyncio.sleep(RELEASE_RECHECK * 2)
            if target.blocked_sources is None:
                break
        assert not any(s.paused for s in sources)
        assert all(s.blocked_by == 0 for s in sources)

    node.loop.run_until_complete(main())


def test_a_closed_target_releases_every_source(node):
    target = Target(state="open", endpoint="master2", blocked_sources=None,
                             queue=SimpleNamespace(congested=True, bytes=70 * 1024))
    other = Target(state="open", endpoint="sat2", blocked_sources=None,
                            queue=SimpleNamespace(congested=True, bytes=70 * 1024))
    sources = [Source(f"agent{i}", 65536) for i in range(5)]
    for source in sources:
        node._block(source, target)
    node._block(sources[0], other)          # also held by another congested queue
    target.state = "closed"
    node.queue_drained(target)
    assert [s.paused for s in sources] == [True, False, False, False, False]
    assert sources[0].blocked_by == 1       # resumes when ``other`` drains


def test_a_reader_whose_last_messages_went_to_a_congested_queue_waits_unread(node):
    """Before its read turn, a reader is paused behind the first congested queue its
    last routed message went to, instead of reading once more and being paused by what
    it read: with 10 000 agents sending one checkable flat out through a satellite, each
    such read brought ~60 versions of one result that the congested parent queue
    coalesced to one (issue 22, the chain's max)."""
    congested = Target(state="open", endpoint="master2", blocked_sources=None,
                       queue=SimpleNamespace(congested=True, bytes=70 * 1024))
    flowing = Target(state="open", endpoint="sat2", blocked_sources=None,
                     queue=SimpleNamespace(congested=False, bytes=0))
    node.connections.update({"master2": congested, "sat2": flowing})
    held = Source("agent1", 8192)
    held.fed_targets = ("sat2", "master2")
    free = Source("agent2", 8192)
    free.fed_targets = ("sat2",)
    new = Source("agent3", 8192)
    new.fed_targets = ()
    gone = Source("agent4", 8192)
    gone.fed_targets = ("no-such-endpoint",)
    for source in (held, free, new, gone):
        node.hold_if_congested(source)
    assert held.paused and list(congested.blocked_sources) == [held]
    assert not free.paused and not new.paused and not gone.paused
    assert flowing.blocked_sources is None

    async def main():
        congested.queue.congested, congested.queue.bytes = False, 0
        node.queue_drained(congested)
        assert not held.paused                     # released with the queue's drain
    node.loop.run_until_complete(main())
