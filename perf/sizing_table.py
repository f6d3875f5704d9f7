"""The sizing summary of perf/RESULTS.md, made from ``router perf --json`` files.

One column group per file (each a run with ``--against icinga2``: router, Icinga, ratio),
one row per measure, as Markdown. Generating the table instead of copying numbers by
hand keeps RESULTS.md equal to the runs it cites.

Usage: ``python perf/sizing_table.py n100.json n1000.json n5000.json``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: (label, scenario, field, decimals or None for an integer, ratio wanted)
ROWS: list[tuple[str, str, str, int | None, bool]] = [
    ("time to all connected, s", "connect", "all_connected_s", 2, True),
    ("node CPU per handshake, ms", "connect", "node_cpu_ms_per_handshake", 2, True),
    ("agent CPU per handshake, ms", "connect", "agent_cpu_ms_per_handshake", 2, False),
    ("RSS per endpoint, KB", "connect", "rss_kb_per_endpoint", None, True),
    ("RSS connected, MB", "connect", "node_rss_mb_connected", None, True),
    ("steady: delivered in window, results/s", "steady", "delivered_per_s", None, True),
    ("steady: latency p50, ms", "steady", "latency_ms_p50", 1, True),
    ("steady: latency p99, ms", "steady", "latency_ms_p99", 1, True),
    ("steady: node CPU s / 10k results", "steady", "node_cpu_s_per_10k", 2, True),
    ("max (flat out): delivered in window, results/s", "max", "delivered_per_s", None, True),
    ("max: node RSS peak, MB", "max", "node_rss_mb_peak", None, True),
    ("churn (10 %): latency p99, ms", "churn", "latency_ms_p99", 1, True),
    ("churn: results missing", "churn", "missing", None, False),
    ("replay: missing", "replay", "missing", None, False),
    ("replay: processed twice", "replay", "duplicates", None, False),
    ("replay: last result after the parent returned, s", "replay",
     "last_arrival_after_return_s", 2, True),
    ("storm: all back since the restart began, s", "storm", "all_back_since_restart_s", 2,
     True),
    ("storm: all back since the port opened, s", "storm", "all_back_since_port_open_s", 2,
     True),
    ("storm: all back after the node reported ready, s", "storm", "all_back_s", 2, True),
    ("storm: node CPU per handshake, ms", "storm", "node_cpu_ms_per_handshake", 2, True),
]


def number(value: Any, decimals: int | None) -> str:
    """``1 234`` for counts, fixed decimals otherwise; ``-`` when not measured."""
    if value is None:
        return "-"
    if decimals is None:
        return f"{round(value):,}".replace(",", " ")
    return f"{value:,.{decimals}f}".replace(",", " ")


def ratio(a: Any, b: Any) -> str:
    """router/icinga: a count from 100 up, two decimals from 0.01, else one digit."""
    if a is None or not b:
        return ""
    r = a / b
    if r >= 100:
        return f"{round(r):,}".replace(",", " ")
    if r >= 0.01 or r == 0:
        return f"{r:.2f}"
    return f"{r:.1g}"


def table(runs: list[dict[str, Any]]) -> str:
    """The Markdown table for ``runs`` (parsed ``--json`` files, each router + icinga)."""
    heads, groups = [], []
    for run in runs:
        sessions = {s["target"]: s for s in run["sessions"]}
        if set(sessions) != {"router", "icinga"}:
            raise ValueError("each file must be a run with --against icinga2 (router and "
                             f"icinga sessions), not {sorted(sessions)}")
        n = f"{run['meta']['endpoints']:,}".replace(",", " ")
        heads += [f"N={n} router", "icinga", "ratio"]
        groups.append((sessions["router"], sessions["icinga"]))
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label, scenario, field, decimals, want_ratio in ROWS:
        cells = []
        for ours, theirs in groups:
            a = (ours.get(scenario) or {}).get(field)
            b = (theirs.get(scenario) or {}).get(field)
            cells += [number(a, decimals), number(b, decimals),
                      ratio(a, b) if want_ratio else ""]
        if all(c in ("-", "") for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_files", nargs="+", type=Path,
                    help="router perf --against icinga2 --json files, in column order")
    args = ap.parse_args(argv)
    try:
        runs = [json.loads(p.read_text()) for p in args.json_files]
        print(table(runs))
    except (OSError, ValueError, KeyError) as exc:
        print(f"sizing_table: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
