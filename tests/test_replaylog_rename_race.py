"""A reload that renames zone A to A2 queues the rename of A's replay log as a writer op
(router/node/replay.py rename_zone -> ReplayWriter.call). The writer thread commits every
record queued when it wakes -- also those submitted AFTER the op -- before it runs the
op (replaylog/writer.py _loop: ``batch = list(queue)`` then ``ready`` ops). A record for
the new name A2 (the zone's endpoint was just disconnected by the reload, so the next
message for A2 is logged) that is in that batch allocates an id for A2, and
StateBase.rename_zone (replaylog/state.py) then refuses the rename ("new has an id
already"): A's backlog is never replayed and is pruned as a stale zone."""

from __future__ import annotations

import threading
from pathlib import Path

from replaylog import ReplayWriter


def test_a_record_for_the_new_name_logged_right_after_the_rename_does_not_strand_the_old_log(
        tmp_path: Path) -> None:
    writer = ReplayWriter.open(tmp_path / "log", batch_ms=1.0)
    try:
        writer.submit("A", 100.1, b"backlog-1")
        writer.submit("A", 100.2, b"backlog-2")
        assert writer.flush(5.0)
        # The writer is busy (a commit's fsync, another op) when the reload runs.
        busy, release = threading.Event(), threading.Event()
        writer.call(lambda: (busy.set(), release.wait(10)))
        assert busy.wait(5)
        # apply_to_node, in one loop step: the closed session's unconfirmed frame goes
        # to A, then the rename is queued ...
        writer.submit("A", 100.3, b"unconfirmed")
        renamed = writer.call_between(writer.store.rename_zone, "A", "A2")
        # ... and right after it the next message for the zone, whose endpoint the reload
        # just disconnected, is logged under its new name.
        writer.submit("A2", 100.4, b"after-reload")
        release.set()
        assert writer.flush(5.0)
        result = renamed.result(5)
        frames = [r.frame for r in writer.store.read_batch("A2")]
        assert result and frames == [b"backlog-1", b"backlog-2", b"unconfirmed",
                                     b"after-reload"], (
            f"the rename A -> A2 returned {result}; zone A2's log holds {frames}, zone A "
            f"still holds {writer.store.zone_records('A')} records that are never replayed: "
            f"the record for A2 submitted after the rename op was committed before it and "
            f"took the name")
    finally:
        writer.close()
