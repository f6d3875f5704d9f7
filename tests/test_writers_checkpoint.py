"""A checkpoint of processed positions waits for the writers' feed to commit.

The node hands each consumed check result to the writers' feed (``ResultFeed``), whose
thread commits it to the durable queue a few milliseconds later. A checkpoint of the
processed positions (``router.node.receipts``) is what the senders are told they need
not replay after a ``kill -9``; if it reached disk while the feed still held results
it covers, a ``kill -9`` then lost those results for every writer (issue 21: no loss to
a writer). These tests block the feed's commit and check that no checkpoint covering
the held results is saved or confirmed until the commit is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path

import pytest

from router.config import WriterSpec
from router.features.writers import WritersService
from router.features.writers.feed import ResultFeed
from router.node.report import replay_families
from tests.chainsim import SimLink, SimNode, chain_spec
from tests.nodeutil import ClusterSpec, check_result
from tests.pkiutil import make_test_pki

pytestmark = pytest.mark.timeout(60)


class BlockedCommits:
    """Makes a feed's commit thread wait inside its queue append until released."""

    def __init__(self, feed: ResultFeed) -> None:
        queue = feed._queue                          # noqa: SLF001 - the fault we inject
        assert queue is not None
        self.release = threading.Event()
        self.entered = threading.Event()
        append = queue.append_encoded

        def blocked(*args, **kwargs):
            self.entered.set()
            assert self.release.wait(30)
            return append(*args, **kwargs)
        queue.append_encoded = blocked               # type: ignore[method-assign]


def test_the_feed_mark_is_reached_once_everything_before_it_is_committed(tmp_path: Path
                                                                          ) -> None:
    feed = ResultFeed(str(tmp_path), [WriterSpec("w1", "graphite")], batch_seconds=0)
    try:
        blocked = BlockedCommits(feed)
        assert feed.reached(feed.mark())            # nothing handed over yet
        for i in range(3):
            assert feed.submit(b'{"n": %d}' % i)
        mark = feed.mark()
        assert blocked.entered.wait(10)
        assert not feed.reached(mark)
        blocked.release.set()
        assert feed.flush(10)
        assert feed.reached(mark)
        assert feed.appended == {"w1": 3}
    finally:
        feed.close()


def test_results_the_feed_drops_do_not_hold_a_mark_back(tmp_path: Path) -> None:
    feed = ResultFeed(str(tmp_path), [WriterSpec("w1", "graphite")], batch_seconds=0,
                      max_pending_bytes=100)
    try:
        assert not feed.submit(b"x" * 200)          # over the bound: dropped and counted
        assert feed.dropped == 1
        assert feed.reached(feed.mark())
    finally:
        feed.close()


def test_a_failing_commit_settles_its_results(tmp_path: Path) -> None:
    feed = ResultFeed(str(tmp_path), [WriterSpec("w1", "graphite")], batch_seconds=0)
    try:
        queue = feed._queue                          # noqa: SLF001
        assert queue is not None

        def broken(*args, **kwargs):
            raise RuntimeError("injected")
        queue.append_encoded = broken                # type: ignore[method-assign]
        assert feed.submit(b'{"n": 1}')
        mark = feed.mark()
        assert feed.flush(10)
        assert feed.reached(mark)                    # counted as failed, not waited for
        assert feed.failed == {"w1": 1}
    finally:
        feed.close()


@pytest.fixture
def chain(tmp_path: Path):
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    spec = ClusterSpec(tmp_path / "nodes", pki, [("master", ["master"], None),
                                                 ("agent1", ["agent1"], "master")])
    loop = asyncio.new_event_loop()
    master, agent = SimNode(spec, "master", loop), SimNode(spec, "agent1", loop)
    master_node = master.start()
    agent.start()
    config = dataclasses.replace(master_node.config,
                                 writers=(WriterSpec("w1", "graphite"),))
    # The node side of the writers only (its feed); the writers' process is not started.
    master_node.writers = WritersService(config, lambda: set())
    link = SimLink(agent, master)
    link.connect()
    yield master, agent, link
    master_node.writers.feed.close()
    for sim in (agent, master):
        sim.stop()
    loop.close()


def _unsaved_metric(node) -> float:
    fams = {f.name: f for f in replay_families(node)}
    saves = dict((labels["result"], v)
                 for labels, v in fams["router_processed_positions_saves_total"].samples)
    assert set(saves) == {"ok", "failed"}
    return fams["router_processed_positions_unsaved_seconds"].samples[0][1]


def test_no_checkpoint_covers_results_the_writers_feed_has_not_committed(chain, caplog
                                                                          ) -> None:
    master, agent, link = chain
    node = master.node
    feed = node.writers.feed
    blocked = BlockedCommits(feed)
    for i in range(5):
        assert agent.node.originate("event::CheckResult", check_result("agent1", f"s{i}", "OK"))
    assert link.deliver(True, 100) == 5
    assert blocked.entered.wait(10)                  # the feed holds them, uncommitted
    for _ in range(3):
        master.checkpoint()
    receipts = node.receipts
    assert receipts.saved_through == 0, "a checkpoint was saved over uncommitted results"
    assert receipts.confirm_position("agent1", 1e18) == 0.0
    assert receipts._pending                         # noqa: SLF001 - it waits
    # An operator sees it: the gauge, and after 30 s a warning that says why.
    assert _unsaved_metric(node) > 0
    later = node.loop.time() + 31
    assert receipts.unsaved_seconds(later) >= 31
    with caplog.at_level(logging.WARNING, logger="router.receipts"):
        receipts._check_stuck(later)                 # noqa: SLF001 - the 1 s tick's check
        receipts._check_stuck(later + 1)             # noqa: SLF001 - not again so soon
    stuck = [r.getMessage() for r in caplog.records if "not saved for" in r.getMessage()]
    assert len(stuck) == 1 and "result writers' queue" in stuck[0], stuck

    blocked.release.set()
    assert feed.flush(10)
    master.checkpoint()
    assert receipts.saved_through >= 1
    assert receipts.confirm_position("agent1", 1e18) == agent.node.last_stamp
    assert feed.appended == {"w1": 5}
    assert _unsaved_metric(node) == 0


def test_a_checkpoint_held_by_a_peer_that_does_not_confirm_names_it(tmp_path: Path,
                                                                     caplog) -> None:
    spec = chain_spec(tmp_path)
    loop = asyncio.new_event_loop()
    sims = {name: SimNode(spec, name, loop) for name in ("master", "sat1", "agent1")}
    try:
        for sim in sims.values():
            sim.start()
        down = SimLink(sims["agent1"], sims["sat1"])
        up = SimLink(sims["sat1"], sims["master"])
        down.connect()
        up.connect()
        assert sims["agent1"].node.originate("event::CheckResult",
                                             check_result("agent1", "s1", "OK"))
        assert down.deliver(True, 10) == 1
        assert up.deliver(True, 10) == 1     # the master has it, and confirms nothing
        sat = sims["sat1"]
        sat.checkpoint()
        receipts = sat.node.receipts
        assert receipts.saved_through == 0
        with caplog.at_level(logging.WARNING, logger="router.receipts"):
            receipts._check_stuck(sat.node.loop.time() + 40)   # noqa: SLF001
        stuck = [r.getMessage() for r in caplog.records if "not saved for" in r.getMessage()]
        assert len(stuck) == 1 and "[master] to confirm" in stuck[0], stuck
        sims["master"].checkpoint()          # the master's own positions on disk,
        sims["master"].confirm()             # then its log::SetLogPosition ...
        up.deliver(False, 10)                # ... reaches sat1
        sat.checkpoint()
        assert receipts.saved_through >= 1
        assert receipts.unsaved_seconds(sat.node.loop.time()) == 0
    finally:
        for sim in sims.values():
            sim.stop()
        loop.close()
