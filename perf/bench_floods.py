"""Honest agents' latency while the node is flooded: quiet vs flood p99, per flood kind.

```sh
python perf/bench_floods.py [--endpoints 100] [--rate 1000] [--window 10] [--repeat 2]
                            [--pin-node-cpu K] [--flooder-nice N] [--decoy] [--json F]
```

(``perf.tool.run`` with ``scenarios=("floods",)``: a scenario of ``router perf``'s
sessions, named only, never part of ``--scenario all``.)

100 emulated agents (``router perf``'s load processes: TLS, own certificates) send
``--rate`` results/s in total through a ``router serve`` satellite (its default limits)
to the emulated parent. For each flood kind of :mod:`perf.floods` (10 000 connections that
never finish the handshake, silent or with a stalled ClientHello; 1 000 anonymous TLS
sessions dripping a byte a second; connect/close loops, bare and with TLS; 300
status-port clients dripping their request head) the bench measures a quiet window, then
the same window with the flood running (the flooder is a process of its own, started a
second before the window), alternating, ``--repeat`` times; it reports the median p50 and
p99 of the honest agents' results (agent's ``execution_end`` to arrival at the parent)
quiet and under flood and their ratio; the issue's target is a flood p99 within 2x of the
quiet one. Also: results lost (none may be), and what the flooder saw (connections
opened, closed by the node).

This is a measurement on a shared 2-core machine where the flooder, the agents and the
node compete for the CPUs: the ratio is the figure, the absolute milliseconds are not.
``--pin-node-cpu K`` puts every thread of the node on CPU K and this tool, its load
processes and the flooders on the other CPUs, quiet and flood windows alike: a real flood
comes from other machines, and on two shared cores the flooder's own CPU (most of a core)
otherwise comes out of the node's. For the same reason the flooder runs at nice 19
(``--flooder-nice``; 0 turns it off): beside the node, this tool's emulated agents and
parent are the measuring instrument (they stamp a result's send and its arrival), and a
flooder that takes their CPU away delays the stamps, not the node. With both on CPU 1 at
the same priority the idle flood's p99 read 5.4 ms, with the flooder niced 1.9 ms, the
same node (issue 21, 2026-12-06). ``--decoy`` measures what is left of that: after the
node's windows, each flood runs again aimed at :mod:`perf.decoy` (a TLS and a plain
listener in a process of their own, on the flooder's CPUs) while the honest agents keep
sending through the node; the "decoy x" column is the p99 ratio a flood causes on this
machine without touching the node (the decoy's own work on the measuring CPU included:
an upper bound on the machine's share).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.report import fmt_or_dash as _fmt  # noqa: E402
from perf.targets import REPO, RouterTarget  # noqa: E402

if TYPE_CHECKING:
    from perf.scenarios import Session

__all__ = ["FLOODS", "floods_phase", "format_floods"]

#: name -> flooder arguments (after ``--port``); "status" floods hit the status port.
FLOODS: dict[str, tuple[str, list[str]]] = {
    "idle-10000": ("cluster", ["idle", "-n", "10000", "--sources", "20", "--hold", "60"]),
    "stalled-hello-10000": ("cluster", ["idle", "-n", "10000", "--sources", "20",
                                        "--hold", "60", "--partial"]),
    "slowloris-1000": ("cluster", ["slowloris", "-n", "1000", "--sources", "4",
                                   "--hold", "60"]),
    "churn-tcp": ("cluster", ["churn", "--workers", "20", "--duration", "{window}"]),
    "churn-tls": ("cluster", ["churn", "--workers", "20", "--duration", "{window}",
                              "--tls"]),
    "slow-headers-300": ("status", ["slowheaders", "-n", "300", "--hold", "60"]),
}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(p * len(values)))]


async def _window(session: Session, seconds: float) -> list[float]:
    t = session.tally
    t.latencies = []
    await asyncio.sleep(seconds)
    lat = sorted(x for _, x in t.latencies)
    t.latencies = []
    return lat


async def floods_phase(session: Session) -> dict[str, Any]:
    opts = session.opts
    target = session.target
    window = opts.duration
    repeat = max(1, opts.flood_repeat)
    rate = opts.rate or 1000.0
    t = session.tally
    t.parse_every = 1
    if opts.pin_node_cpu is not None:
        pin_apart(session, opts.pin_node_cpu)
    for _, pipe, _ in session.workers:
        pipe.send(("go", rate / opts.endpoints, 0.0, (0.5, 2.0)))
    deliv_go = t.check_results
    await asyncio.sleep(opts.warmup)
    decoy = await _start_decoy(opts.flooder_nice) if opts.flood_decoy else None
    rows = []
    try:
        for name, (port_kind, args) in FLOODS.items():
            if port_kind == "status" and not isinstance(target, RouterTarget):
                continue
            if opts.flood_only and name not in opts.flood_only:
                continue
            port = getattr(target, "status_port" if port_kind == "status" else "port")
            row = await _measure(session, name, args, port, "flooder")
            if decoy is not None:
                # The same flood at the decoy: what it costs this machine's instrument.
                aside = await _measure(session, name, args, decoy[1][port_kind], "decoy")
                for key in ("quiet_p99_ms", "flood_p99_ms", "p99_ratio", "flooder"):
                    row[f"decoy_{key}"] = aside[key]
            rows.append(row)
            session.say(f"{name}: p99 quiet {_fmt(row['quiet_p99_ms'])} ms, flood "
                        f"{_fmt(row['flood_p99_ms'])} ms, ratio {_fmt(row['p99_ratio'], '.2f')}"
                        + (f"; at the decoy {_fmt(row['decoy_p99_ratio'], '.2f')}"
                           if decoy is not None else "") + f"; flooder {row['flooder']}")
    finally:
        if decoy is not None:
            decoy[0].stdin.close()      # type: ignore[union-attr]
            await decoy[0].wait()
    stopped = [r[1] for r in await session.ask_all(("stop",), 60)]
    sent = sum(s["sent"] for s in stopped)
    await session.drain(deliv_go + sent)
    res = {"scenario": "floods", "offered_per_s": rate, "window_s": window,
           "repeat": repeat, "rows": rows, "sent": sent,
           "missing": max(0, sent - (t.check_results - deliv_go))}
    session.say("floods:\n" + format_floods(res))
    return res


async def _measure(session: Session, name: str, args: list[str], port: int,
                   label: str) -> dict[str, Any]:
    """``--repeat`` pairs of a quiet window and a window with flood ``name`` aimed at
    ``port``; medians and the flooder's own report."""
    opts = session.opts
    window = opts.duration
    quiet: list[tuple[float | None, float | None]] = []
    flood: list[tuple[float | None, float | None]] = []
    seen: list[dict[str, Any]] = []
    for _ in range(max(1, opts.flood_repeat)):
        lat = await _window(session, window)
        quiet.append((_pct(lat, 0.5), _pct(lat, 0.99)))
        cmd = [*_flooder_prefix(opts), sys.executable, "-m", "perf.floods",
               *(a.format(window=window + 1.5) for a in args), "--port", str(port)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=str(REPO), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(1.0)
        lat = await _window(session, window)
        flood.append((_pct(lat, 0.5), _pct(lat, 0.99)))
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 90)
            seen.append(json.loads(out.decode().strip().splitlines()[-1]))
        except (TimeoutError, ValueError, IndexError):
            proc.kill()
            await proc.wait()
            seen.append({"error": f"{label} did not report"})
        await asyncio.sleep(2.0)               # what the flood left behind settles
    q99, f99 = _med([q[1] for q in quiet]), _med([f[1] for f in flood])
    return {
        "flood": name,
        "quiet_p50_ms": _med([q[0] for q in quiet]),
        "quiet_p99_ms": q99,
        "flood_p50_ms": _med([f[0] for f in flood]),
        "flood_p99_ms": f99,
        "quiet_p99_runs": [q[1] for q in quiet], "flood_p99_runs": [f[1] for f in flood],
        "flooder": seen[-1],
        "p99_ratio": (f99 / q99) if q99 and f99 is not None else None,
    }


def _flooder_prefix(opts: Any) -> list[str]:
    """How a flooder is started: niced on this tool's CPUs.

    (Not on the node's CPU under ``SCHED_IDLE``: tried, 2026-12-07, and withdrawn. The
    honest agents' results then stopped for 0.1-0.7 s at a time while the node's own
    loop-lag probe saw nothing over 22 ms and the kernel dropped or retransmitted none of
    their packets: a stall of the machine, not of the node; perf/RESULTS.md.)"""
    return ["nice", "-n", str(opts.flooder_nice)] if opts.flooder_nice else []


async def _start_decoy(nice: int) -> tuple[asyncio.subprocess.Process, dict[str, int]]:
    """``perf.decoy`` on this process's CPUs (the flooders'), at the flooders' nice."""
    proc = await asyncio.create_subprocess_exec(
        *(["nice", "-n", str(nice)] if nice else []), sys.executable, "-m", "perf.decoy",
        cwd=str(REPO), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    return proc, json.loads(line)


def pin_apart(session: Session, cpu: int) -> None:
    """Every thread of the node's processes on ``cpu``; this process (the flooders it
    starts inherit it) and the load processes on the other CPUs."""
    others = set(range(os.cpu_count() or 1)) - {cpu}
    if not others:
        raise SystemExit("--pin-node-cpu needs at least two CPUs")
    session.refresh_node_procs()
    for proc in session.node_procs:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})
    for pid in [os.getpid(), *(p.pid for p, _, _ in session.workers)]:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), others)
    session.say(f"node pinned to CPU {cpu}; this tool, its load processes and the "
                f"flooders to {sorted(others)}")


def _med(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return statistics.median(real) if real else None


def format_floods(res: dict[str, Any]) -> str:
    decoy = any("decoy_p99_ratio" in r for r in res["rows"])
    lines = [f"{'flood':22} {'quiet p50':>10} {'quiet p99':>10} {'flood p50':>10} "
             f"{'flood p99':>10} {'p99 x':>6}" + (f" {'decoy x':>8}" if decoy else "")
             + "  flooder: opened / closed by node"]
    for r in res["rows"]:
        f = r["flooder"]
        lines.append(f"{r['flood']:22} {_fmt(r['quiet_p50_ms']):>10} "
                     f"{_fmt(r['quiet_p99_ms']):>10} {_fmt(r['flood_p50_ms']):>10} "
                     f"{_fmt(r['flood_p99_ms']):>10} {_fmt(r['p99_ratio'], '.2f'):>6}"
                     + (f" {_fmt(r.get('decoy_p99_ratio'), '.2f'):>8}" if decoy else "")
                     + f"  {f.get('opened', '-')} / {f.get('closed_by_node', '-')}")
    lines.append(f"results sent {res['sent']}, missing {res['missing']} "
                 f"({res['offered_per_s']:g}/s offered, {res['window_s']:g} s windows, "
                 f"median of {res['repeat']})")
    return "\n".join(lines)


def main() -> None:
    import argparse

    from perf.tool import Options, run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", type=int, default=100)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--pin-node-cpu", type=int, default=None, metavar="K",
                   help="the node on CPU K, this tool, its agents and the flooders on "
                        "the others")
    p.add_argument("--flooder-nice", type=int, default=19, metavar="N",
                   help="the flooder's nice value (default 19; 0: the same as the agents)")
    p.add_argument("--decoy", action="store_true",
                   help="also aim each flood at perf.decoy instead of the node: the p99 "
                        "ratio the flood causes on this machine without the node")
    p.add_argument("--only", default="", metavar="KINDS",
                   help="comma-separated flood kinds to run (default: all of "
                        + ", ".join(FLOODS) + ")")
    a = p.parse_args()
    only = tuple(k for k in a.only.split(",") if k)
    if unknown := set(only) - set(FLOODS):
        p.error(f"unknown flood kinds: {', '.join(sorted(unknown))}")
    opts = Options(endpoints=a.endpoints, rate=a.rate, duration=a.window,
                   scenarios=("floods",), json_path=a.json_path, flood_repeat=a.repeat,
                   pin_node_cpu=a.pin_node_cpu, flooder_nice=a.flooder_nice,
                   flood_decoy=a.decoy, flood_only=only)
    result = run(opts)
    for s in result["sessions"]:
        if "floods" in s:
            print(f"# {s['target']} ({s.get('version')}): {a.endpoints} agents")
            print(format_floods(s["floods"]))


if __name__ == "__main__":
    main()
