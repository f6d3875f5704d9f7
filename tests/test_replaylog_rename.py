"""A reload that renames a zone (same endpoints, new name) renames its replay log: the
log is kept per zone name, and what was logged under the old name was never replayed
under the new one (found by review; tests/test_receipts_reload_zone_rename.py is the
node-level version)."""

from __future__ import annotations

from pathlib import Path

from replaylog import ReplayStore
from router.node.reload import renamed_zones
from router.routing import EndpointSpec, Topology, ZoneSpec


def test_the_records_follow_the_new_name_across_a_reopen(tmp_path: Path) -> None:
    store = ReplayStore(tmp_path / "log")
    try:
        store.append_many([("A", 100.0 + i, b"frame%d" % i, None) for i in range(3)])
        store.append_many([("B", 200.0, b"other", None)])
        assert store.rename_zone("A", "A2")
        assert not store.rename_zone("B", "A2")          # taken: the logs stay apart
        assert store.zone_records("A2") == 3 and store.zone_records("A") == 0
    finally:
        store.close()
    again = ReplayStore(tmp_path / "log")
    try:
        assert [r.frame for r in again.read_batch("A2")] == [b"frame0", b"frame1", b"frame2"]
        assert sorted(again.zones_with_records()) == ["A2", "B"]
    finally:
        again.close()


def test_renamed_zones_pairs_zones_by_their_endpoints() -> None:
    eps = [EndpointSpec(n) for n in ("p", "m", "e1", "e2")]
    before = Topology([ZoneSpec("top", ("p",)), ZoneSpec("mid", ("m",), "top"),
                       ZoneSpec("A", ("e1",), "mid"), ZoneSpec("B", ("e2",), "mid")], eps, "m")
    after = Topology([ZoneSpec("top", ("p",)), ZoneSpec("mid", ("m",), "top"),
                      ZoneSpec("A2", ("e1",), "mid"), ZoneSpec("B", ("e2",), "mid")], eps, "m")
    assert renamed_zones(before, after) == [("A", "A2")]
    assert renamed_zones(before, before) == []
