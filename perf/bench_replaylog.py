#!/usr/bin/env python3
"""Replay log throughput: append via the writer thread, replay, and disk bytes per message.

Rows (TSV: name, value, unit, note; or ``--json``):
  raw_putmulti            bare py-lmdb: putmulti(append=True), one txn per --batch records;
                          the floor for our append path (same sync setting, same layout)
  store_append_many       ReplayStore.append_many, --batch records per call, one thread
  writer_append           ReplayWriter: submit() N records from this thread, then flush();
                          msg/s from the first submit to the flush returning (group commit)
  writer_submit           what submit() costs the calling (event loop) thread, µs/msg
  writer_batch            mean records per commit in writer_append
  writer_append_replaying writer_append while another thread replays the log flat out
  raw_iterate             bare py-lmdb cursor walk, buffers=True, one bytes() copy per record
  replay                  ReplayStore.iter_from over --records records
  disk_bytes_per_msg      data.mdb size / records after the replay fill
  used_bytes_per_msg      LMDB pages in use / records; payload_bytes_per_msg: key + value

Targets from the issue: append >= 200 000 msg/s, replay >= 50 000 msg/s (1 KiB frames).
Each throughput is the best of --repeat runs. The append rows run with --sync (default
"on" = fsync per commit, the store's default; "off" = MDB_NOSYNC; "both").

Usage: python perf/bench_replaylog.py [--records 1000000] [--append 200000]
       [--frame-size 1024] [--batch 1000] [--batch-ms 5] [--sync on|off|both]
       [--repeat 3] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lmdb  # noqa: E402

from replaylog import ReplayStore, ReplayWriter  # noqa: E402
from replaylog import keys as K  # noqa: E402

APPEND_TARGET = 200_000
REPLAY_TARGET = 50_000


def make_frame(size: int) -> bytes:
    """A netstring-framed CheckResult-like payload of ``size`` bytes in total."""
    head = b'{"jsonrpc":"2.0","method":"event::CheckResult","params":{"cr":{"output":"'
    tail = b'"}},"ts":1700000000.5}'
    digits = len(str(size))
    pad = max(0, size - digits - 2 - len(head) - len(tail))
    body = head + b"x" * pad + tail
    return b"%d:%b," % (len(body), body)


def fresh(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def bench_raw_putmulti(base: Path, n: int, frame: bytes, batch: int, sync: bool) -> float:
    path = fresh(base, "raw")
    env = lmdb.open(str(path), map_size=4 << 30, max_dbs=K.MAX_DBS, sync=sync,
                    metasync=sync)
    db = env.open_db(K.RECORDS_DB)
    pack_key, pack_header = K.record_key, K.HEADER.pack
    seq = 0
    start = time.perf_counter()
    for _ in range(n // batch):
        items = []
        for _ in range(batch):
            seq += 1
            items.append((pack_key(1, seq), pack_header(1.0, K.NO_ZONE) + frame))
        with env.begin(write=True, db=db) as txn:
            txn.cursor().putmulti(items, append=True)
    elapsed = time.perf_counter() - start
    env.close()
    shutil.rmtree(path)
    return seq / elapsed


def bench_store_append(base: Path, n: int, frame: bytes, batch: int, sync: bool) -> float:
    path = fresh(base, "store")
    store = ReplayStore(path, sync=sync, max_bytes=8 << 30)
    records = [("agent-1", 1.0 + i, frame, None) for i in range(batch)]
    start = time.perf_counter()
    for _ in range(n // batch):
        store.append_many(records)
    elapsed = time.perf_counter() - start
    store.close()
    shutil.rmtree(path)
    return (n // batch) * batch / elapsed


def bench_writer(base: Path, n: int, frame: bytes, batch: int, batch_ms: float, sync: bool,
                 replaying: bool = False) -> dict:
    path = fresh(base, "writer")
    commits = []
    writer = ReplayWriter.open(path, batch_messages=batch, batch_ms=batch_ms, sync=sync,
                               max_bytes=8 << 30, max_pending_bytes=1 << 40,
                               on_commit=lambda k, c: commits.append(k))
    stop = threading.Event()
    replayed = [0]
    reader = None
    if replaying:
        writer.store.append_many([("agent-1", 0.5, frame, None)] * 1000)

        def replay() -> None:
            while not stop.is_set():
                for _ in writer.store.iter_from("agent-1"):
                    replayed[0] += 1
                    if stop.is_set():
                        break
        reader = threading.Thread(target=replay)
        reader.start()
    submit = writer.submit
    start = time.perf_counter()
    for i in range(n):
        submit("agent-1", 1.0 + i, frame, None)
    submitted = time.perf_counter()
    assert writer.flush(600)
    done = time.perf_counter()
    stop.set()
    if reader is not None:
        reader.join()
    writer.close()
    shutil.rmtree(path)
    return {"msg_per_s": n / (done - start), "submit_us": (submitted - start) / n * 1e6,
            "batch": sum(commits) / max(1, len(commits)), "replayed": replayed[0]}


def fill_for_replay(base: Path, n: int, frame: bytes) -> Path:
    path = fresh(base, "replay")
    chunk = 10_000
    with ReplayStore(path, sync=False, max_bytes=max(8 << 30, 4 * n * len(frame)),
                     max_map_size=max(16 << 30, 8 * n * len(frame))) as store:
        done = 0
        while done < n:
            k = min(chunk, n - done)
            store.append_many([("agent-1", 1.0 + done + i, frame, None) for i in range(k)])
            done += k
    return path


def bench_raw_iterate(path: Path) -> float:
    env = lmdb.open(str(path), max_dbs=K.MAX_DBS, readonly=True)
    db = env.open_db(K.RECORDS_DB, create=False)
    count = 0
    start = time.perf_counter()
    with env.begin(db=db, buffers=True) as txn:
        for _key, value in txn.cursor():
            bytes(value[K.HEADER_SIZE:])
            count += 1
    elapsed = time.perf_counter() - start
    env.close()
    return count / elapsed


def bench_replay(path: Path, n: int) -> tuple[float, dict]:
    with ReplayStore(path, readonly=True) as store:
        start = time.perf_counter()
        count = 0
        for _ in store.iter_from("agent-1", 0.0):
            count += 1
        elapsed = time.perf_counter() - start
        stats = store.stats()
    assert count == n, (count, n)
    return count / elapsed, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="records to replay")
    ap.add_argument("--append", type=int, default=200_000, help="records per append run")
    ap.add_argument("--frame-size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1000, help="records per transaction")
    ap.add_argument("--batch-ms", type=float, default=5.0)
    ap.add_argument("--sync", choices=("on", "off", "both"), default="on")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="where to put the environments (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of TSV")
    args = ap.parse_args(argv)

    frame = make_frame(args.frame_size)
    base = Path(tempfile.mkdtemp(prefix="bench-replaylog-", dir=args.dir))
    rows: list[dict] = []

    def row(name: str, value: float, unit: str, note: str = "") -> None:
        rows.append({"name": name, "value": value, "unit": unit, "note": note})
        if not args.json:
            print(f"{name}\t{value:.2f}\t{unit}\t{note}", flush=True)

    if not args.json:
        print(f"# frame {len(frame)} B, batch {args.batch}, batch_ms {args.batch_ms}, "
              f"append {args.append}, replay {args.records}, dir {base}, "
              f"lmdb {lmdb.__version__}, python {sys.version.split()[0]}", flush=True)
        print("name\tvalue\tunit\tnote", flush=True)
    try:
        syncs = {"on": [True], "off": [False], "both": [True, False]}[args.sync]
        for sync in syncs:
            tag = "sync" if sync else "nosync"
            best = max(bench_raw_putmulti(base, args.append, frame, args.batch, sync)
                       for _ in range(args.repeat))
            row(f"raw_putmulti[{tag}]", best, "msg/s")
            best = max(bench_store_append(base, args.append, frame, args.batch, sync)
                       for _ in range(args.repeat))
            row(f"store_append_many[{tag}]", best, "msg/s")
            runs = [bench_writer(base, args.append, frame, args.batch, args.batch_ms, sync)
                    for _ in range(args.repeat)]
            top = max(runs, key=lambda r: r["msg_per_s"])
            ok = "PASS" if top["msg_per_s"] >= APPEND_TARGET else "BELOW"
            row(f"writer_append[{tag}]", top["msg_per_s"], "msg/s",
                f"target {APPEND_TARGET}: {ok}")
            row(f"writer_submit[{tag}]", min(r["submit_us"] for r in runs), "us/msg",
                "cost on the submitting thread")
            row(f"writer_batch[{tag}]", top["batch"], "msg/commit")
            rep = bench_writer(base, args.append, frame, args.batch, args.batch_ms, sync,
                               replaying=True)
            row(f"writer_append_replaying[{tag}]", rep["msg_per_s"], "msg/s",
                f"{rep['replayed']} records replayed meanwhile by another thread")

        path = fill_for_replay(base, args.records, frame)
        best = max(bench_raw_iterate(path) for _ in range(args.repeat))
        row("raw_iterate", best, "msg/s")
        results = [bench_replay(path, args.records) for _ in range(args.repeat)]
        best_rate = max(r[0] for r in results)
        stats = results[0][1]
        ok = "PASS" if best_rate >= REPLAY_TARGET else "BELOW"
        row("replay", best_rate, "msg/s", f"target {REPLAY_TARGET}: {ok}")
        n = args.records
        row("disk_bytes_per_msg", stats["file_bytes"] / n, "B/msg",
            f"frame {len(frame)} B")
        row("used_bytes_per_msg", stats["used_bytes"] / n, "B/msg")
        row("payload_bytes_per_msg", stats["bytes"] / n, "B/msg", "key + header + frame")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps({"frame_bytes": len(frame), "batch": args.batch,
                          "batch_ms": args.batch_ms, "append": args.append,
                          "records": args.records, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
