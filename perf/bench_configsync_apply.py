"""The event loop's cost of applying one config::Update on a satellite holding N zones,
when one file of one zone changed (``ConfigSync.receive``: parse, store, publish).

    python -m perf.bench_configsync_apply [--zones 2000] [--repeat 3]

A real ``ConfigSync`` on a real ``ZoneStore`` under a temporary directory (no network,
no node: what the loop does when the message arrives). The first update stores all N
zones (one ``hosts.conf`` each); then ``--repeat`` updates each change one zone's file.
Prints the wall time of the first update and of each later one (``time.perf_counter``
around ``receive``: the loop is blocked for that long).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zones", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from router.routing import EndpointSpec, Topology, ZoneSpec
    from tests.test_configsync import ScriptedNode, make_sync, master_message

    n = args.zones
    zones = [ZoneSpec("master", ("master1",)), ZoneSpec("satellite", ("sat1",), "master")]
    zones += [ZoneSpec(f"agent{i}", (f"agent{i}",), "satellite") for i in range(n)]
    endpoints = [EndpointSpec(e) for e in ("master1", "sat1", *(f"agent{i}" for i in range(n)))]
    node = ScriptedNode(Topology(zones, endpoints, "sat1"), {"master1"})
    work = Path(tempfile.mkdtemp(prefix="bench-configsync-apply-"))
    try:
        sync = make_sync(work, node)
        files = {f"agent{i}": {"hosts.conf": f'object Host "h{i}" {{}}\n'} for i in range(n)}
        started = time.perf_counter()
        assert sync.receive("master1", master_message(files)) is None
        print(f"{n} zones, first update (all new): {time.perf_counter() - started:.3f} s")
        for k in range(args.repeat):
            files[f"agent{k}"] = {"hosts.conf": f'object Host "changed{k}" {{}}\n'}
            started = time.perf_counter()
            assert sync.receive("master1", master_message(
                files, ts=f"{1700000050 + k}.000000")) is None
            print(f"{n} zones, one file changed: {time.perf_counter() - started:.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
