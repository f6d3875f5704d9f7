"""The node's one writer queue shared by all writers (issue 19): each result appended
once, one position per writer, per-writer bounds, the writers' set changing at reload,
positions never reused, and the old per-writer queues emptied first."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import struct
import time
from pathlib import Path

import lmdb
import orjson

from router.config import WriterSpec
from router.features.writers.feed import ResultFeed
from router.features.writers.legacy import (DrainingQueue, LegacyQueue, legacy_queue_path,
                                            open_shared_queue)
from router.features.writers.queue import SharedQueue, shared_queue_path
from router.features.writers.runner import WriterRunner, ZoneView
from tests.test_writers_queue import ScriptedBackend

MiB = 1 << 20


def drain(queue: SharedQueue, name: str, batch: int = 7) -> list[bytes]:
    """Everything ``name`` gets, read and confirmed in small batches as a runner does."""
    got: list[bytes] = []
    reader = queue.reader(name)
    after = 0
    while records := reader.read(after, batch):
        got += [raw for _, _, raw in records]
        after = records[-1][0]
        reader.confirm(after)
    return got


def test_three_writers_one_append_per_round_each_sees_every_result_once(tmp_path, monkeypatch):
    calls: list[int] = []
    real = SharedQueue.append_encoded

    def counting(self, values, max_bytes):
        calls.append(len(values))
        return real(self, values, max_bytes)
    monkeypatch.setattr(SharedQueue, "append_encoded", counting)
    specs = [WriterSpec(n, "graphite") for n in ("a", "b", "c")]
    feed = ResultFeed(str(tmp_path), specs, batch_seconds=0.5)
    sent = [b'{"n":%d}' % i for i in range(300)]
    for raw in sent:
        assert feed.submit(raw)
    assert feed.flush(20)
    feed.close()
    # One append (one transaction) per round for all three writers, not one per writer.
    assert sum(calls) == 300 and len(calls) < 300 // 3
    assert feed.appended == {"a": 300, "b": 300, "c": 300}
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    assert q.held()[0] == 300                  # stored once, not once per writer
    assert drain(q, "a") == sent
    assert q.held()[0] == 300                  # b and c still need them all
    assert drain(q, "b") == sent and drain(q, "c") == sent
    assert q.held() == (0, 0)                  # all confirmed everywhere: deleted
    assert [q.stats(n).backlog for n in "abc"] == [0, 0, 0]
    q.close()


def test_a_slow_writer_is_evicted_alone_by_its_bound(tmp_path: Path):
    q = SharedQueue(tmp_path / "q")
    for name in ("slow", "roomy", "fast"):
        q.register(name)
    bounds = {"slow": 1 * MiB, "roomy": 8 * MiB, "fast": 1 * MiB}
    big = b"x" * 100_000
    fast = q.reader("fast")
    evictions: dict[str, int] = {}
    for i in range(30):
        _, evicted = q.append_many([(time.time(), big + b"%d" % i)], bounds)
        for name, n in evicted.items():
            evictions[name] = evictions.get(name, 0) + n
        [(position, _, _)] = fast.read(0, 10)
        fast.confirm(position)                  # the fast writer keeps up
    assert evictions == {"slow": 20}            # only the slow one passed its bound
    slow, roomy = q.stats("slow"), q.stats("roomy")
    assert (slow.backlog, slow.evicted) == (10, 20) and slow.bytes <= 1 * MiB
    assert (roomy.backlog, roomy.evicted) == (30, 0)
    assert (q.stats("fast").backlog, q.stats("fast").evicted) == (0, 0)
    assert q.held()[0] == 30                    # roomy still needs every record
    assert [raw[-2:] for raw in drain(q, "slow")] == [b"%d" % i for i in range(20, 30)]
    assert len(drain(q, "roomy")) == 30
    q.close()


def test_writers_behind_together_pass_the_same_records_in_one_walk(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Writers over one bound from one position are moved past their oldest records by
    one walk of the queue per append, not one each; a writer with another bound, or
    another position, is walked on its own. Each ends where its own walk would put it."""
    q = SharedQueue(tmp_path / "q")
    names = ("a", "b", "c", "ahead", "roomy")
    for name in names:
        q.register(name)
    bounds = {**dict.fromkeys(("a", "b", "c", "ahead"), 1 * MiB), "roomy": 3 * MiB // 2}
    walks: list[int] = []
    real = SharedQueue._advance

    def counting(self, txn, reader, **kw):
        walks.append(reader.position)
        return real(self, txn, reader, **kw)
    monkeypatch.setattr(SharedQueue, "_advance", counting)
    big = b"x" * 100_000                       # 10 records fit 1 MiB, 15 fit 1.5 MiB
    ahead = q.reader("ahead")
    for i in range(10):
        q.append_many([(time.time(), big + b"%02d" % i)], bounds)
    [(position, _, _)] = ahead.read(0, 1)
    ahead.confirm(position)                    # "ahead" confirmed its first record
    walks.clear()
    evicted_total: dict[str, int] = {}
    for i in range(10, 25):
        _, evicted = q.append_many([(time.time(), big + b"%02d" % i)], bounds)
        for name, n in evicted.items():
            evicted_total[name] = evicted_total.get(name, 0) + n
    # 11th record: a, b and c over 1 MiB (one walk), "ahead" not; from then on all four
    # at one position (one walk a round); "roomy" over 1.5 MiB from the 16th (its own)
    assert len(walks) == 15 + 10
    assert evicted_total == {"a": 15, "b": 15, "c": 15, "ahead": 14, "roomy": 10}
    stats = {n: q.stats(n) for n in names}
    assert len({(s.position, s.bytes) for n, s in stats.items() if n != "roomy"}) == 1
    assert stats["a"].bytes <= 1 * MiB and stats["a"].backlog == 10
    assert stats["roomy"].bytes <= 3 * MiB // 2 and stats["roomy"].backlog == 15
    for name in ("a", "b", "c", "ahead"):
        assert [raw[-2:] for raw in drain(q, name)] == [b"%02d" % i for i in range(15, 25)]
    assert [raw[-2:] for raw in drain(q, "roomy")] == [b"%02d" % i for i in range(10, 25)]
    assert q.held() == (0, 0)
    q.close()


def test_a_writer_removed_at_reload_stops_holding_back_pruning(tmp_path: Path):
    both = [WriterSpec("a", "graphite"), WriterSpec("gone", "graphite")]
    feed = ResultFeed(str(tmp_path), both)
    for i in range(50):
        feed.submit(b'{"n":%d}' % i)
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    assert len(drain(q, "a")) == 50
    assert q.held()[0] == 50                    # "gone" has read nothing: all kept for it
    q.close()
    feed = ResultFeed(str(tmp_path), both)
    feed.reconfigure([both[0]])                 # the reload that removes it
    feed.submit(b"{}")
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    assert q.writers() == ["a"] and q.held()[0] == 1     # only a's unread result left
    q.confirm("gone", q.stats("a").head)        # a late confirm of the removed writer
    assert q.writers() == ["a"]                 # does not bring its position back
    assert drain(q, "a") == [b"{}"] and q.held() == (0, 0)
    q.close()


def test_a_writer_added_at_reload_starts_at_the_head(tmp_path: Path):
    feed = ResultFeed(str(tmp_path), [WriterSpec("a", "graphite")])
    for i in range(20):
        feed.submit(b'{"old":%d}' % i)
    assert feed.flush(10)
    feed.reconfigure([WriterSpec("a", "graphite"), WriterSpec("new", "influxdb")])
    assert feed.flush(10)
    fresh = [b'{"new":%d}' % i for i in range(5)]
    for raw in fresh:
        feed.submit(raw)
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    assert drain(q, "new") == fresh             # no replay of what came before it
    assert len(drain(q, "a")) == 25
    q.close()


def test_a_wiped_data_directory_never_reuses_positions(tmp_path: Path):
    data = tmp_path / "data"
    feed = ResultFeed(str(data), [WriterSpec("pg", "postgresql", dsn="x")])
    for _ in range(500):
        feed.submit(b"{}")
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(data)))
    stored = q.stats("pg").head                # what PostgreSQL would have committed
    q.close()
    shutil.rmtree(data)
    feed = ResultFeed(str(data), [WriterSpec("pg", "postgresql", dsn="x")])
    feed.submit(b'"after"')
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(data)))
    [(position, _, raw)] = q.reader("pg").read(0, 10)
    assert raw == b'"after"' and position > stored
    q.close()


def test_a_restart_keeps_each_writers_position(tmp_path: Path):
    specs = [WriterSpec("a", "graphite"), WriterSpec("b", "influxdb")]
    feed = ResultFeed(str(tmp_path), specs)
    for i in range(30):
        feed.submit(b'{"n":%d}' % i)
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    a, b = q.reader("a"), q.reader("b")
    a.confirm(a.read(0, 10)[-1][0])             # a: 10 written
    b.confirm(b.read(0, 25)[-1][0])             # b: 25 written
    q.close()
    feed = ResultFeed(str(tmp_path), specs)     # the node restarts
    feed.submit(b'{"n":30}')
    assert feed.flush(10)
    feed.close()
    q = SharedQueue(shared_queue_path(str(tmp_path)))
    assert (q.stats("a").backlog, q.stats("b").backlog) == (21, 6)
    assert drain(q, "a")[0] == b'{"n":10}' and drain(q, "b")[0] == b'{"n":25}'
    q.close()


def make_old_queue(data_dir: Path, writer: str, records: list[bytes], confirmed: int) -> int:
    """A per-writer queue as the old layout left it: ``records`` appended, the first
    ``confirmed`` of them delivered. Its head."""
    key, ts = struct.Struct(">Q"), struct.Struct("<d")
    path = legacy_queue_path(str(data_dir), writer)
    path.mkdir(parents=True)
    env = lmdb.open(str(path), max_dbs=2, map_size=64 * MiB)
    recs, meta = env.open_db(b"records"), env.open_db(b"meta")
    origin = time.time_ns() // 1000 + 10_000_000     # as if made a while ago on a fast clock
    with env.begin(write=True) as txn:
        for i, raw in enumerate(records[confirmed:], start=confirmed + 1):
            txn.put(key.pack(origin + i), ts.pack(time.time()) + raw, db=recs)
        for name, value in ((b"head", origin + len(records)),
                            (b"position", origin + confirmed),
                            (b"bytes", sum(len(r) + 8 for r in records[confirmed:])),
                            (b"evicted", 0)):
            txn.put(name, key.pack(value), db=meta)
    env.close()
    return origin + len(records)


def test_an_old_per_writer_queue_is_delivered_first_then_removed(tmp_path: Path):
    """Upgrade: the old queue's undelivered results go to that writer only, before the
    shared queue's, with positions increasing throughout (PostgreSQL stores them)."""
    def msg(i: int) -> bytes:
        return orjson.dumps({"params": {"host": f"h{i}"}})
    old_head = make_old_queue(tmp_path, "s", [msg(i) for i in range(10)], confirmed=4)
    shared = open_shared_queue(str(tmp_path), 4 * MiB)
    shared.register("s")
    shared.register("other")
    shared.append_many([(time.time(), msg(i)) for i in range(10, 13)], {})
    assert shared.stats("s").head > old_head         # above the old positions
    old = LegacyQueue.open_if_present(str(tmp_path), "s", 4 * MiB)
    assert old is not None
    queue = DrainingQueue(old, shared.reader("s"))
    assert queue.stats().backlog == 6 + 3
    spec = WriterSpec("s", "graphite", flush_interval=0.01, flush_threshold=4, timeout=1)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    runner = WriterRunner(spec, queue, "n", ZoneView("n", ("n",)), pool,
                          factory=ScriptedBackend)

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 30
        while runner.written < 9 or queue.old is not None:
            assert time.monotonic() < deadline, runner.stats()
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    written = runner.backend.written                 # type: ignore[attr-defined]
    assert len(written) == 9 and written == sorted(written)
    assert written[:6] == [old_head - 5 + i for i in range(6)]
    assert not legacy_queue_path(str(tmp_path), "s").exists()
    assert queue.stats().backlog == 0
    assert shared.stats("other").backlog == 3       # the old records were s's alone
    shared.close()
    pool.shutdown()
