"""The sizing summary of perf/RESULTS.md, made from ``router perf --json`` files.

One column group per file (each a run with ``--against icinga2``: router, Icinga, ratio;
with ``--against icinga2,floor`` also the count-only floor and router/floor; a
``--topology chain`` run may have the floor as its only comparison), one row per measure,
as Markdown. Generating the table instead of copying numbers by
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
    # issue 22 (scale)
    ("steady: node CPU per result, us", "steady", "node_cpu_us_per_result", 1, True),
    ("max: node CPU per result, us", "max", "node_cpu_us_per_result", 1, True),
    ("down: ExecuteCommand to every agent, msgs/s", "down", "messages_per_s", None, True),
    ("down: node CPU per message, us", "down", "node_cpu_us_per_message", 1, True),
    ("agentstorm: all back after dropping at once, s", "agentstorm", "all_back_s", 2, True),
    ("agentstorm: replayed results", "agentstorm", "backlog", None, False),
    ("agentstorm: all replayed results processed, s", "agentstorm", "all_processed_s", 2,
     True),
]

#: the node under test (``chain``: our satellite and master) and what it is compared with
OURS = ("router", "chain")
COMPARED = ("icinga", "floor")


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
    """The Markdown table for ``runs`` (parsed ``--json`` files, each router + icinga,
    or router/chain + icinga and/or floor)."""
    heads, groups = [], []
    for run in runs:
        sessions = {s["target"]: s for s in run["sessions"]}
        ours = [t for t in OURS if t in sessions]
        others = [t for t in COMPARED if t in sessions]
        chain_with_floor = ours == ["chain"] and others
        if len(ours) != 1 or set(sessions) != {*ours, *others} or not (
                "icinga" in others or chain_with_floor):
            raise ValueError("each file must be a run with --against icinga2 (router and "
                             f"icinga sessions), not {sorted(sessions)}")
        n = f"{run['meta']['endpoints']:,}".replace(",", " ")
        heads.append(f"N={n} {ours[0]}")
        for other in others:
            heads += [other, "ratio"]
        groups.append((sessions[ours[0]], [sessions[o] for o in others]))
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label, scenario, field, decimals, want_ratio in ROWS:
        cells = []
        for ours_s, theirs in groups:
            a = (ours_s.get(scenario) or {}).get(field)
            cells.append(number(a, decimals))
            for other in theirs:
                b = (other.get(scenario) or {}).get(field)
                cells += [number(b, decimals), ratio(a, b) if want_ratio else ""]
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
