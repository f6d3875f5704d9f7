"""Micro-benchmark of two pieces measured for issues 21 and 22.

- ``Receipts.accept`` per relayed message, with the recent origin stamps kept for the
  next checkpoint's save (``writer`` set: one append per message) and without (no replay
  log): what saving rule 1's state across a kill -9 costs the loop (49080f6, eda67e2).
- ``Executions.prune`` at the cap of 100 000 kept executions, none expired: the
  once-a-second scan a profile found (3d2643f stops at the first one still due).

Usage: ``python perf/bench_receipts.py [--repeat R]``. Each figure is the minimum over
``--repeat`` runs (the least disturbed), in microseconds (accept: per call; prune: per
call at the cap).
"""

from __future__ import annotations

import argparse
import time
import uuid

from router.node.executions import MAX_PENDING_EXECUTIONS, Executions
from router.node.receipts import Receipts

CALLS = 200_000
ORIGINS = 10_000


def accept_us(persisting: bool) -> float:
    receipts = Receipts(host=None)  # type: ignore[arg-type]  (accept needs no host)
    if persisting:
        receipts.writer = object()  # type: ignore[assignment]  (only tested for None)
    names = [f"agent{i}" for i in range(ORIGINS)]
    accept = receipts.accept
    ts = 1.0
    started = time.perf_counter()
    for i in range(CALLS):
        ts += 0.001
        accept("sat1", names[i % ORIGINS], ts)
        if i % 10_000 == 0:
            receipts.moved_recent = []      # a checkpoint takes them every 250 ms
    return (time.perf_counter() - started) / CALLS * 1e6


def prune_us() -> float:
    executions = Executions.__new__(Executions)
    now = time.time()
    executions.pending = {str(uuid.uuid4()): ("master", now + 600 + i * 0.001, "agent")
                          for i in range(MAX_PENDING_EXECUTIONS)}
    started = time.perf_counter()
    executions.prune()
    return (time.perf_counter() - started) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [("accept, no replay log", lambda: accept_us(False)),
            ("accept, stamps kept for the save", lambda: accept_us(True)),
            (f"prune, {MAX_PENDING_EXECUTIONS} kept, none expired", prune_us)]
    for label, run in rows:
        print(f"{label:45s} {min(run() for _ in range(args.repeat)):10.3f} us")


if __name__ == "__main__":
    main()
