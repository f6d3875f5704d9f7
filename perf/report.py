"""The output of ``router perf``: progress on stderr while it runs, the table at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ROWS", "Progress", "fmt_or_dash", "format_report"]


class Progress:
    """``update(done, text)``: a click progress bar on a terminal, a line a second else."""

    def __init__(self, label: str, total: int, tty: bool, echo: Callable[[str], None]) -> None:
        self.label, self.total, self.tty, self.echo = label, total, tty, echo
        self.done = 0
        self.text = ""
        self._last_line = 0.0
        self._bar: Any = None
        if tty:
            import click
            self._bar = click.progressbar(length=max(1, total), label=label, file=sys.stderr,
                                          show_eta=False, item_show_func=lambda _: self.text)
            self._bar.__enter__()

    def update(self, done: int, text: str = "") -> None:
        self.text = text
        if self._bar is not None:
            step = max(0, min(done, self.total) - self.done)
            self.done = max(self.done, min(done, self.total))
            self._bar.update(step, None)
            self._bar.render_progress()
        elif time.monotonic() - self._last_line >= 1.0:
            self._last_line = time.monotonic()
            self.echo(f"  {self.label}: {done}/{self.total} {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def fmt_or_dash(x: Any, fmt: str = ".1f") -> str:
    """``x`` in format ``fmt``, or ``-`` for None."""
    return "-" if x is None else format(x, fmt)


#: (label, path in a session result, format, better: "high"|"low"|None)
ROWS = [
    ("time to all connected, s", ("connect", "all_connected_s"), ".2f", "low"),
    ("handshakes/s", ("connect", "handshakes_per_s"), ".0f", "high"),
    ("node CPU per handshake, ms", ("connect", "node_cpu_ms_per_handshake"), ".2f", "low"),
    ("agent CPU per handshake, ms", ("connect", "agent_cpu_ms_per_handshake"), ".2f", None),
    ("RSS per endpoint, KB", ("connect", "rss_kb_per_endpoint"), ".1f", "low"),
    ("RSS connected, MB", ("connect", "node_rss_mb_connected"), ".1f", "low"),
    ("steady: offered results/s", ("steady", "offered_per_s"), ".0f", None),
    ("steady: delivered results/s", ("steady", "delivered_per_s"), ".0f", "high"),
    ("steady: latency p50, ms", ("steady", "latency_ms_p50"), ".1f", "low"),
    ("steady: latency p99, ms", ("steady", "latency_ms_p99"), ".1f", "low"),
    ("steady: latency p999, ms", ("steady", "latency_ms_p999"), ".1f", "low"),
    ("steady: node CPU s/10k results", ("steady", "node_cpu_s_per_10k"), ".3f", "low"),
    ("steady: node RSS peak, MB", ("steady", "node_rss_mb_peak"), ".1f", "low"),
    ("steady: missing", ("steady", "missing"), "d", None),
    ("max: delivered results/s", ("max", "delivered_per_s"), ".0f", "high"),
    ("max: accepted results/s", ("max", "accepted_per_s"), ".0f", "high"),
    ("max: latency p99, ms", ("max", "latency_ms_p99"), ".0f", "low"),
    ("max: node CPU s/10k results", ("max", "node_cpu_s_per_10k"), ".3f", "low"),
    ("max: node RSS peak, MB", ("max", "node_rss_mb_peak"), ".1f", "low"),
    ("churn: delivered results/s", ("churn", "delivered_per_s"), ".0f", "high"),
    ("churn: reconnects/s", ("churn", "churn_reconnects_per_s"), ".1f", None),
    ("churn: latency p99, ms", ("churn", "latency_ms_p99"), ".1f", "low"),
    ("churn: missing", ("churn", "missing"), "d", None),
    ("replay: results sent while cut off", ("replay", "sent"), "d", None),
    ("replay: backlog drained, s", ("replay", "drain_s"), ".2f", "low"),
    ("replay: last result after return, s", ("replay", "last_arrival_after_return_s"), ".2f",
     "low"),
    ("replay: missing", ("replay", "missing"), "d", None),
    ("replay: duplicates", ("replay", "duplicates"), "d", None),
    ("replay: resent, ignored as older", ("replay", "ignored_as_older"), "d", None),
    ("storm: node start, s", ("storm", "start_s"), ".2f", None),
    ("storm: all back after node ready, s", ("storm", "all_back_s"), ".2f", "low"),
    ("storm: all back since port open, s", ("storm", "all_back_since_port_open_s"), ".2f",
     "low"),
    ("storm: all back since restart, s", ("storm", "all_back_since_restart_s"),
     ".2f", "low"),
    ("storm: node CPU per handshake, ms", ("storm", "node_cpu_ms_per_handshake"), ".2f",
     "low"),
    ("stormload: quiet p99, ms", ("stormload", "quiet_latency_ms_p99"), ".1f", "low"),
    ("stormload: established p50, ms", ("stormload", "established_latency_ms_p50"), ".1f",
     "low"),
    ("stormload: established p99, ms", ("stormload", "established_latency_ms_p99"), ".1f",
     "low"),
    ("stormload: storm agents all back, s", ("stormload", "all_back_s"), ".2f", "low"),
    ("refused by the node (steady)", ("steady", "refused"), "d", None),
    ("steady: node CPU us/result", ("steady", "node_cpu_us_per_result"), ".1f", "low"),
    ("max: node CPU us/result", ("max", "node_cpu_us_per_result"), ".1f", "low"),
    ("down: ExecuteCommand msgs/s to agents", ("down", "messages_per_s"), ".0f", "high"),
    ("down: node CPU us/message", ("down", "node_cpu_us_per_message"), ".1f", "low"),
    ("agentstorm: all back, s", ("agentstorm", "all_back_s"), ".2f", "low"),
    ("agentstorm: replayed results", ("agentstorm", "backlog"), "d", None),
    ("agentstorm: all processed, s", ("agentstorm", "all_processed_s"), ".2f", "low"),
]


def _get(res: dict[str, Any], path: tuple[str, str]) -> Any:
    return (res.get(path[0]) or {}).get(path[1])


def format_report(result: dict[str, Any]) -> str:
    sessions = result["sessions"]
    meta = result["meta"]
    lines = [(f"# router perf: {meta['endpoints']} endpoints, {meta['payload_bytes']}-byte "
              f"CheckResults, rate {meta['rate']}, {meta['warmup']:g} s warm-up + "
              f"{meta['duration']:g} s window, scenarios {','.join(meta['scenarios'])}; "
              f"{meta['cpus']} CPUs, python {meta['python']}, {meta['workers']} load "
              f"processes")]
    for s in sessions:
        lines.append(f"# {s['target']}: {s.get('version', '?')}")
    names = [s["target"] for s in sessions]
    both = len(sessions) >= 2
    # one ratio column per other session: the first session over it (router/icinga, ...)
    ratio_heads = [("ratio" if len(sessions) == 2 else f"/{n}") for n in names[1:]]
    head = f"{'measure':38}" + "".join(f"{n:>14}" for n in names) + "".join(
        f"{h:>10}" for h in ratio_heads)
    lines += ["", head]
    for label, path, fmt, better in ROWS:
        vals = [_get(s, path) for s in sessions]
        if all(v is None for v in vals):
            continue
        row = f"{label:38}" + "".join(
            f"{(format(v, fmt) if v is not None else '-'):>14}" for v in vals)
        a = vals[0]
        for b in vals[1:]:
            ratio = (a / b) if (a is not None and b and better) else None
            row += f"{fmt_or_dash(ratio, '.2f'):>10}"
        lines.append(row)
    if both:
        lines.append(f"ratio = {names[0]}/{', '.join(names[1:])}; higher is better for rates, "
                     f"lower for times, latency, CPU and memory")
    for s in sessions:
        c = s.get("connect", {})
        gen = " + ".join(f"{x:.2f}" for x in c.get("generator_cpu_cores", []))
        lines.append(f"  {s['target']}: node started in {s.get('node_start_s', 0):.1f} s; "
                     f"load processes during connect {gen} cores; connect failures "
                     f"{c.get('connect_failures')}")
        for sc in ("steady", "max", "churn"):
            r = s.get(sc)
            if r:
                gen = " + ".join(f"{x:.2f}" for x in r["generator_cpu_cores"])
                lines.append(f"  {s['target']} {sc}: load processes {gen} cores, parent "
                             f"{r['parent_cpu_cores']:.2f}, machine {r['machine_busy']:.0%} "
                             f"busy; sent {r['sent']}, delivered {r['delivered_total']}, "
                             f"coalesced {r['coalesced']}, agent errors "
                             f"{len(r['agent_errors'])}, closed by node {r['closed_by_node']}")
        for sc, key in (("steady", "node_cpu_us_per_result_each"),
                        ("max", "node_cpu_us_per_result_each"),
                        ("down", "node_cpu_us_per_message_each")):
            each = (s.get(sc) or {}).get(key) or {}
            if len(each) > 1:       # the chain: per node
                lines.append(f"  {s['target']} {sc}: node CPU per message, us: " + ", ".join(
                    f"{name} {fmt_or_dash(us)}" for name, us in each.items()))
        r = s.get("replay")
        if r:
            lines.append(f"  {s['target']} replay: cut {r['cut_s']:.1f} s, sent {r['sent']}, "
                         f"unique received {r['received_unique']}, duplicates "
                         f"{r['duplicates']}, exactly once: {r['exactly_once']}")
    for s in sessions:
        for w in s.get("warnings", []):
            lines.append(f"WARNING [{s['target']}]: {w}")
    lines.append(f"\ntotal run time {meta['total_run_s']:.1f} s")
    return "\n".join(lines)
