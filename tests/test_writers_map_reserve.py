"""Once the writers' queue map is full (MDB_MAP_FULL), nothing can make room again: the
emergency eviction (``SharedQueue._emergency_evict``) and the removal of a stale writer
(``retain``) are write transactions that need new pages themselves, so they fail with
MDB_MAP_FULL too; every later batch of results is counted as failed and lost, also after
a restart of the node, until an operator runs ``router writers reset``.

The map fills here the way test_writers_stale_register.py leaves the queue: a position
kept for a writer 'x' that is not configured, which no bound moves (registered here by
another process directly, so this test does not depend on that fault). The map is
shrunk (``MIN_MAP_SIZE = 0``: 67 MiB for 1 MiB bounds) so that it fills in seconds; the
real one (>= 4 GiB) fills the same way, later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from router.config import WriterSpec
from router.features.writers import queue as queue_module
from router.features.writers.feed import ResultFeed
from router.features.writers.queue import SharedQueue, shared_queue_path

MiB = 1 << 20

SMALL_MAP = "import router.features.writers.queue as q; q.MIN_MAP_SIZE = 0\n"
RESULT = b'{"method":"event::CheckResult","params":{"output":"%s"}}' % (b"o" * 3000)


def round_of(feed: ResultFeed, n: int = 100) -> bool:
    """Submit ``n`` results and wait for their commit; True if they were queued."""
    failed = dict(feed.failed)
    for _ in range(n):
        assert feed.submit(RESULT)
    assert feed.flush(30)
    return feed.failed == failed


def test_the_queue_makes_room_before_its_map_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(queue_module, "MIN_MAP_SIZE", 0)
    a = WriterSpec("a", "graphite", max_backlog_bytes=MiB)
    data_dir = tmp_path / "data"
    feed = ResultFeed(str(data_dir), [a], batch_seconds=0, max_pending_bytes=8 * MiB)
    # A position for 'x', which the node's feed does not know (no bound for it).
    code = SMALL_MAP + ("from router.features.writers.queue import SharedQueue\n"
                        f"SharedQueue({str(shared_queue_path(str(data_dir)))!r}).register('x')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    try:
        # The map filled after ~170 rounds: every later one failed, for good.
        failed = sum(not round_of(feed) for _ in range(400))
        made_room = dict(feed.evicted)
        feed.close()
        feed = ResultFeed(str(data_dir), [a], batch_seconds=0, max_pending_bytes=8 * MiB)
        lost = failed + sum(not round_of(feed) for _ in range(20))
    finally:
        feed.close()
    q = SharedQueue(shared_queue_path(str(data_dir)))
    try:
        writers = q.writers()
    finally:
        q.close()
    assert lost == 0, (
        f"{lost} of 20 rounds of results after the map filled (and after a restart) "
        f"were not queued: the queue stays full for good (writers kept: {writers}); "
        "neither the emergency eviction nor the restart's retain can commit in a full map")
    assert made_room.get("x", 0) > 0, (
        f"the unbounded writer's oldest results were never evicted (evicted: {made_room})")
