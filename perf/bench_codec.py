"""Micro-benchmark of the codec hot path against bare orjson.

Every relayed cluster message goes through: netstring decode -> JSON parse -> re-encode
with a new ``ts``/``originZone`` -> netstring encode. This script measures that path on a
realistic ~1 KiB ``event::CheckResult`` (golden message 4 of the protocol brief, with
the plugin output padded) and compares it with the floor, a bare ``orjson.loads`` +
``orjson.dumps`` of the same payload, so a regression in our framing or in the
per-message bookkeeping shows up as a growing ratio.

Usage: ``python perf/bench_codec.py [--json] [--number N] [--repeat R]``.
Each figure is the minimum over ``--repeat`` runs of ``timeit`` (the least disturbed run),
in microseconds per message.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable

import orjson

from router.protocol import netstring
from router.protocol.jsonrpc import parse_message, relay_payload
from router.protocol.netstring import NetstringDecoder

TARGET_SIZE = 1024
BATCH = 100
RELAY_TS = 1700000100.75


def check_result_payload(target_size: int = TARGET_SIZE) -> bytes:
    """Golden message 4 (a relayed service check result), padded to ``target_size``."""
    message = {
        "jsonrpc": "2.0",
        "method": "event::CheckResult",
        "params": {
            "cr": {
                "active": True,
                "check_source": "sat1.example.com",
                "command": ["/usr/lib/nagios/plugins/check_http", "-H", "10.0.0.5"],
                "execution_end": 1700000100.52,
                "execution_start": 1700000100.31,
                "exit_status": 0,
                "output": "HTTP OK: HTTP/1.1 200 OK",
                "performance_data": ["time=0.21s;;;0"],
                "previous_hard_state": 0,
                "schedule_end": 1700000100.52,
                "schedule_start": 1700000100.0,
                "scheduling_source": "sat1.example.com",
                "state": 0,
                "ttl": 0,
                "type": "CheckResult",
                "vars_after": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
                "vars_before": {"attempt": 1, "reachable": True, "state": 0, "state_type": 1},
            },
            "host": "web01",
            "service": "http",
        },
        "ts": 1700000100.53,
    }
    padding = max(0, target_size - len(orjson.dumps(message)))
    message["params"]["cr"]["output"] += " - " + "x" * max(0, padding - 3)
    return orjson.dumps(message)


def bare_orjson(payload: bytes) -> Callable[[], object]:
    """The floor: one parse and one serialisation, no framing, no bookkeeping."""
    loads, dumps = orjson.loads, orjson.dumps

    def run() -> object:
        return dumps(loads(payload))
    return run


def our_relay_path(payload: bytes) -> Callable[[], object]:
    """What the node does per relayed message: decode frame, parse, restamp, frame."""
    frame = netstring.encode(payload)
    decoder = NetstringDecoder(1 << 20)
    encode = netstring.encode

    def run() -> object:
        out = None
        for raw in decoder.feed(frame):
            out = encode(relay_payload(parse_message(raw), RELAY_TS, "satellite"))
        return out
    return run


def batch_feed_parse(payload: bytes) -> Callable[[], object]:
    """One read holding ``BATCH`` frames: one feed call, then a parse per message."""
    data = netstring.encode(payload) * BATCH
    decoder = NetstringDecoder(1 << 20)

    def run() -> object:
        return [parse_message(raw) for raw in decoder.feed(data)]
    return run


def measure(run: Callable[[], object], messages: int, number: int, repeat: int) -> float:
    """Microseconds per message, minimum over ``repeat`` runs of ``number`` calls."""
    best = min(timeit.repeat(run, number=number, repeat=repeat))
    return best / (number * messages) * 1e6


def run_benchmarks(number: int, repeat: int) -> dict[str, object]:
    payload = check_result_payload()
    bare = measure(bare_orjson(payload), 1, number, repeat)
    ours = measure(our_relay_path(payload), 1, number, repeat)
    batch = measure(batch_feed_parse(payload), BATCH, max(1, number // BATCH), repeat)
    return {
        "payload_bytes": len(payload),
        "number": number,
        "repeat": repeat,
        "python": sys.version.split()[0],
        "orjson": orjson.__version__,
        "results_us_per_message": {
            "bare_orjson_loads_dumps": bare,
            "ours_feed_parse_relay_encode": ours,
            "ours_batch100_feed_parse": batch,
        },
        "ratio_ours_over_bare": ours / bare,
        "ratio_batch_over_bare": batch / bare,
    }


def print_table(results: dict[str, object]) -> None:
    timings = results["results_us_per_message"]
    assert isinstance(timings, dict)
    bare = timings["bare_orjson_loads_dumps"]
    print(f"# payload {results['payload_bytes']} bytes, python {results['python']}, "
          f"orjson {results['orjson']}, min of {results['repeat']} x {results['number']}")
    print("case\tus_per_msg\tratio_vs_bare")
    for name, value in timings.items():
        print(f"{name}\t{value:.3f}\t{value / bare:.2f}")
    print(f"ratio ours/bare\t{results['ratio_ours_over_bare']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (min is kept)")
    args = parser.parse_args(argv)
    results = run_benchmarks(args.number, args.repeat)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
