"""The recent origin stamps saved with the checkpoints (``Receipts`` rule 3): faults a
review of that change found (2026-12-07), each failing on the code before its fix.

- A save over ``RECENT`` stamps was cut by dropping the first peers' stamps, not the
  oldest: one still in the window was lost, and after a kill -9 the partner's replay of
  a message processed already passed (twice).
- The stamps waiting for a save grew without bound while checkpoints could not be saved
  (a peer that never confirms; saves that keep failing).
- Long (legal) names filled the 64 MiB map, and every save failed from then on.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from replaylog import ReceivedPositions
from router.node import receipts as R
from router.node.receipts import Receipts
from router.node.stats import EndpointStats


class _Loop:
    def __init__(self) -> None:
        self.soon: list[Any] = []

    def time(self) -> float:
        return 0.0

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))

    def run(self) -> None:
        while self.soon:
            fn, args = self.soon.pop(0)
            fn(*args)


class _Writer:
    """Runs every call at once; ``fail`` makes the calls fail like a full disk."""

    fail: BaseException | None = None

    def call(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            if self.fail is not None:
                raise self.fail
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001
            future.set_exception(e)
        return future


class _Host:
    name = "master1"
    topology = None
    last_stamp = 0.0

    def __init__(self) -> None:
        self.loop = _Loop()
        self.connections: dict[str, Any] = {}
        self.stats: dict[str, EndpointStats] = {}
        self.ratelog = SimpleNamespace(log=lambda *a, **k: None)

    def feature_barrier(self) -> None:
        return None

    def stamp_above(self, ts: float) -> None:
        self.last_stamp = max(self.last_stamp, ts)

    def endpoint_stats(self, name: str) -> EndpointStats:
        return self.stats.setdefault(name, EndpointStats(name))


def _receipts(store: ReceivedPositions) -> tuple[Receipts, _Host, _Writer]:
    host, writer = _Host(), _Writer()
    receipts = Receipts(host)  # type: ignore[arg-type]
    receipts.attach(writer, store)  # type: ignore[arg-type]
    return receipts, host, writer


def _tick(receipts: Receipts, host: _Host) -> None:
    receipts.checkpoint()
    host.loop.run()


def test_a_save_over_the_window_keeps_the_newest_stamps(tmp_path: Path) -> None:
    path = tmp_path / "received"
    with ReceivedPositions(path) as store:
        r, host, _ = _receipts(store)
        ts = 1.0
        for i in range(10):                       # master2 comes first
            ts += 1
            assert r.accept("master2", f"other{i}", ts)
        half = R.RECENT // 2
        for i in range(half):
            ts += 1
            assert r.accept("sat1", f"agent{i % 100 + 2}", ts)
        ts += 1
        assert r.accept("master2", "agent1", ts)  # master2 relays agent1's r0 ...
        r0 = ts
        ts += 1
        assert r.accept("sat1", "agent1", ts)     # ... sat1 then brings the newer r1
        for i in range(R.RECENT - half - 1):
            ts += 1
            assert r.accept("sat1", f"agent{i % 100 + 2}", ts)
        _tick(r, host)                            # one save of RECENT + 11 stamps
        assert r.saves == 1 and not r._pending    # noqa: SLF001
        assert not r.accept("master2", "agent1", r0)
    with ReceivedPositions(path) as store:        # kill -9; master2 sends r0 again
        r, host, _ = _receipts(store)
        assert not r.accept("master2", "agent1", r0), "r0 processed a second time"


class _Unconfirmed:
    """A ledger holding logged frames the peer never confirms."""

    newest, bytes = 1.0, 100

    def __len__(self) -> int:
        return 1


class _Stuck:
    """A connection to a peer that never confirms."""

    endpoint = "master2"
    queue = None
    stats = SimpleNamespace(confirmed_log_position=0.0)
    ledger = _Unconfirmed()


def _pending_stamps(r: Receipts) -> int:
    return sum(len(p.recent) for p in r._pending) + len(r.moved_recent)  # noqa: SLF001


def _feed(r: Receipts, host: _Host, n: int) -> None:
    ts = 1.0
    for i in range(n):
        ts += 1.0
        assert r.accept("sat1", f"agent{i % 500}", ts)
        if i % 2000 == 0:
            _tick(r, host)
    _tick(r, host)


def test_stamps_waiting_for_a_peer_that_never_confirms_stay_bounded(tmp_path: Path) -> None:
    with ReceivedPositions(tmp_path / "received") as store:
        r, host, _ = _receipts(store)
        host.connections["master2"] = _Stuck()
        _feed(r, host, 3 * R.RECENT)
        assert r.saves == 0
        assert _pending_stamps(r) <= R.RECENT, _pending_stamps(r)


def test_stamps_of_saves_that_keep_failing_stay_bounded(tmp_path: Path) -> None:
    with ReceivedPositions(tmp_path / "received") as store:
        r, host, writer = _receipts(store)
        writer.fail = OSError(28, "No space left on device")
        _feed(r, host, 3 * R.RECENT)
        assert r.save_failures > 10
        assert _pending_stamps(r) <= R.RECENT, _pending_stamps(r)


def test_long_names_do_not_fill_the_map(tmp_path: Path) -> None:
    recent = [(f"{i:06d}" + "a" * 294, float(i), "s" * 300) for i in range(R.RECENT)]
    with ReceivedPositions(tmp_path / "received") as store:
        for n in range(4):      # each checkpoint's save (the third failed: map full)
            store.save({"x": float(n)}, recent, R.RECENT)
        assert len(store.load_recent()) == R.RECENT
