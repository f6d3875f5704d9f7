"""The soak: mixed traffic for a long while, sampled once a "minute", judged flat or not.

``router perf --scenario soak --endpoints 5000 --duration 600`` (or ``python perf/soak.py``)
runs, on the connected agents of a ``router perf`` session (issue 21 part 2; users.md P5,
P9, P20: memory and logs that grow until a restart):

* results up: every agent sends at the paced ``--rate`` (results/s in total);
* commands down: the emulated parent sends ``event::ExecuteCommand`` to a random agent
  ``COMMANDS_PER_S`` times a second (the node relays them down, counted by the node);
* reconnect churn: 1 % of the agents drop their session and dial again, each about once a
  minute (a random 30-90 s connected, then a redial);
* a reload a minute: SIGHUP to the real ``router serve`` process, with a configuration that
  differs from the running one each time (``[limits] max_invalid_messages`` alternates), so
  every reload applies a diff rather than finding nothing to do; Icinga 2 gets its SIGHUP too
  (it restarts its worker and every agent redials: users.md P2).

Each interval (``soak_interval``, 60 s) gives one row: the node's RSS and open fds (its
process tree, from /proc), the bytes in its send queues and unconfirmed by the parent and
the bytes in its replay log (our router's /metrics; Icinga has no such figures; the
emulated agents confirm what they receive every 5 s, as Icinga's do, so the commands
written to them leave their unconfirmed ledgers; what they hold at a sample, and a
churned agent's frames that went to its zone's log, are reported as
``agents_unconfirmed_bytes``, not judged), the p50/p99
of the results' latency (agent's ``execution_end`` to arrival at the parent) in that
interval, results delivered per second, agents connected, reloads done.

Verdict ``flat`` (:func:`verdict`): RSS and fds at the last interval within 5 % of the
second (the first includes warm-up allocations), the send queues, the bytes unconfirmed
by the parent and the parent zone's replay-log records not growing without bound (the
largest value of the second half no more than twice the largest of the first half plus
1 MiB, or 1 000 records, of slack: these are near zero when the parent keeps up, so a
relative test alone would flag noise), and p99 stable (the median p99 of the second half
no more than twice that of the first half, plus 5 ms of slack for a sub-millisecond
baseline on a shared machine).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.load import C_IDENTIFIED  # noqa: E402
from perf.measure import cpu_seconds, file_rss_bytes, rss_bytes  # noqa: E402
from perf.report import fmt_or_dash as _fmt  # noqa: E402
from perf.targets import IcingaTarget, RouterTarget  # noqa: E402
from perf.wire import MASTER, SERVICE, agent_name, netstring  # noqa: E402

if TYPE_CHECKING:
    from perf.scenarios import Session

__all__ = ["COMMANDS_PER_S", "CHURN_FRACTION", "format_table", "soak_phase", "verdict"]

#: event::ExecuteCommand frames the parent sends down a second.
COMMANDS_PER_S = 10.0
#: Share of the agents that reconnect, each about once a minute.
CHURN_FRACTION = 0.01
#: Churn: a churning agent stays connected a random 30-90 s (60 s on average).
CHURN_PERIOD = (30.0, 90.0)
#: Slack of the growth tests (see the module docstring).
BYTES_SLACK = 1 << 20
RECORDS_SLACK = 1000
P99_SLACK_MS = 5.0

_METRIC = re.compile(rb"^(router_send_queue_bytes|router_unconfirmed_bytes|"
                     rb"router_replay_log_bytes|router_replay_log_records|"
                     rb"router_messages_sent_total|"
                     rb"router_reloads_total)(\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


def node_metrics(target: Any) -> dict[str, float]:
    """Our router's queue, unconfirmed and replay-log bytes, commands relayed and reloads
    done, from its /metrics (empty for Icinga or when the node does not answer)."""
    if not isinstance(target, RouterTarget):
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{target.status_port}/metrics",
                                    timeout=10) as resp:
            text = resp.read()
    except OSError:
        return {}
    out = {"queue_bytes": 0.0, "unconfirmed_bytes": 0.0, "replay_bytes": 0.0,
           "commands_relayed": 0.0, "reloads_ok": 0.0, "agents_unconfirmed_bytes": 0.0,
           "replay_records_master": 0.0}
    for name, labels, value in _METRIC.findall(text):
        v = float(value)
        if name == b"router_send_queue_bytes":
            out["queue_bytes"] += v
        elif name == b"router_unconfirmed_bytes":
            # towards the parent; what the agents have not confirmed yet (they confirm
            # every 5 s, as Icinga's agents do) is reported apart, not judged
            if MASTER.encode() in (labels or b"").split(b'"'):
                out["unconfirmed_bytes"] += v
            else:
                out["agents_unconfirmed_bytes"] += v
        elif name == b"router_replay_log_bytes":
            out["replay_bytes"] += v
        elif name == b"router_replay_log_records" and b'zone="master"' in (labels or b""):
            out["replay_records_master"] += v
        elif name == b"router_messages_sent_total" and b"ExecuteCommand" in (labels or b""):
            out["commands_relayed"] += v
        elif name == b"router_reloads_total" and b'result="ok"' in (labels or b""):
            out["reloads_ok"] += v
    return out


def open_fds(procs: list[Any]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.num_fds()
        except Exception:  # noqa: BLE001, S112 - a worker that just exited
            continue
    return total


def command_frame(agent: str) -> bytes:
    """The parent's ``event::ExecuteCommand`` for ``agent`` (a check of its service)."""
    now = time.time()
    return netstring(orjson.dumps({
        "jsonrpc": "2.0", "method": "event::ExecuteCommand", "ts": now,
        "params": {"endpoint": agent, "host": agent, "service": SERVICE,
                   "command_type": "check_command", "command": "dummy",
                   "macros": {}, "source": str(uuid.uuid4()), "deadline": now + 60}}))


def reload_node(target: Any, count: int) -> str:
    """SIGHUP to the node's main process; our router first gets a configuration that
    differs from the running one (so the reload applies a diff). Returns what was done."""
    if isinstance(target, RouterTarget) and target.proc is not None:
        text = target.config_path.read_text()
        text = re.sub(r"\nmax_invalid_messages = \d+\n", "\n", text)
        value = 100 + count % 2
        if "\n[limits]\n" in text:
            text = text.replace("\n[limits]\n", f"\n[limits]\nmax_invalid_messages = {value}\n")
        else:
            text += f"\n[limits]\nmax_invalid_messages = {value}\n"
        target.config_path.write_text(text)
        os.kill(target.proc.pid, signal.SIGHUP)
        return f"SIGHUP, max_invalid_messages = {value}"
    if isinstance(target, IcingaTarget) and target.node.pid:
        os.kill(target.node.pid, signal.SIGHUP)
        return "SIGHUP"
    return "no reload (external node)"


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(p * len(values)))]


async def soak_phase(session: Session) -> dict[str, Any]:
    """The soak on ``session``'s connected agents; the per-interval rows and the verdict."""
    opts = session.opts
    target = session.target
    n = opts.endpoints
    rate = opts.rate or 5000.0
    interval = min(opts.soak_interval, opts.duration)
    intervals = max(1, round(opts.duration / interval))
    t = session.tally
    t.parse_every = 1 if rate <= 20000 else 16
    t.latencies = []
    await session.ask_all(("reconnect", True), 10)      # after a reload, dial again
    for _, pipe, _ in session.workers:
        pipe.send(("go", rate / n, CHURN_FRACTION, CHURN_PERIOD))
    go = time.monotonic()
    deliv_go = t.check_results
    stop = asyncio.Event()
    commands = {"sent": 0}

    async def send_commands() -> None:
        rnd = random.Random(21)
        while not stop.is_set():
            parent = session.parent
            if parent is not None and parent.transport is not None \
                    and not parent.transport.is_closing():
                parent.transport.write(command_frame(agent_name(rnd.randrange(n))))
                commands["sent"] += 1
            await asyncio.sleep(1.0 / COMMANDS_PER_S)

    async def keep_parent() -> None:
        """Icinga drops the parent on its reload too: dial it again."""
        while not stop.is_set():
            await asyncio.sleep(1.0)
            parent = session.parent
            if parent is None or parent.transport is None or parent.transport.is_closing():
                try:
                    await session.connect_parent()
                except (OSError, TimeoutError):
                    pass

    helpers = [asyncio.ensure_future(send_commands()), asyncio.ensure_future(keep_parent())]
    await asyncio.sleep(opts.warmup)
    rows: list[dict[str, Any]] = []
    reloads: list[str] = []
    start = time.monotonic()
    last_delivered = t.check_results
    last_t = start
    last_cpu = cpu_seconds(session.node_procs)
    t.latencies = []
    try:
        for k in range(1, intervals + 1):
            end_at = start + k * interval
            # the reload in the middle of the interval, so the sample at its end sees it
            await asyncio.sleep(max(0.0, end_at - interval / 2 - time.monotonic()))
            reloads.append(await asyncio.to_thread(reload_node, target, k))
            await asyncio.sleep(max(0.0, end_at - time.monotonic()))
            cpu = cpu_seconds(session.node_procs)
            session.refresh_node_procs()     # Icinga's worker is a new process after reload
            now = time.monotonic()
            lat = sorted(x for _, x in t.latencies)
            t.latencies = []
            metrics = await asyncio.to_thread(node_metrics, target)
            row = {
                "interval": k, "t_s": round(now - start, 1),
                "rss_mb": rss_bytes(session.node_procs) / 2**20,
                # File-backed pages (the LMDB maps, shared libraries) beside the heap:
                # growth in RSS that is all file-backed is the replay log's map being
                # touched, which the kernel reclaims, not memory the node holds.
                "rss_file_mb": file_rss_bytes(session.node_procs) / 2**20,
                "fds": open_fds(session.node_procs),
                "queue_bytes": metrics.get("queue_bytes"),
                "unconfirmed_bytes": metrics.get("unconfirmed_bytes"),
                "replay_bytes": metrics.get("replay_bytes"),
                "replay_records_master": metrics.get("replay_records_master"),
                "agents_unconfirmed_bytes": metrics.get("agents_unconfirmed_bytes"),
                "latency_ms_p50": _pct(lat, 0.50), "latency_ms_p99": _pct(lat, 0.99),
                "latency_samples": len(lat),
                "delivered_per_s": (t.check_results - last_delivered) / (now - last_t),
                "agents_up": session.counter_sum(C_IDENTIFIED),
                "commands_sent": commands["sent"],
                "commands_relayed": metrics.get("commands_relayed"),
                "reloads_ok": metrics.get("reloads_ok"),
                # the node's CPU in the interval, and the machine's 1-minute load average
                # (a shared machine: a p99 rise with the load is the machine's)
                # (None when the node's processes changed: Icinga's reload forks anew)
                "node_cpu_cores": ((cpu - last_cpu) / (now - last_t)
                                   if cpu >= last_cpu else None),
                "loadavg": os.getloadavg()[0],
            }
            last_delivered, last_t = t.check_results, now
            last_cpu = cpu_seconds(session.node_procs)
            rows.append(row)
            session.say(format_row(row))
            if target.exited() is not None:
                session.warn(f"soak: the node exited during interval {k}")
                break
    finally:
        stop.set()
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    stopped = [r[1] for r in await session.ask_all(("stop",), 60)]
    await session.ask_all(("reconnect", False), 10)
    sent = sum(s["sent"] for s in stopped)
    drain_s = await session.drain(deliv_go + sent)
    delivered = t.check_results - deliv_go
    judged = verdict(rows)
    res: dict[str, Any] = {
        "scenario": "soak", "offered_per_s": rate, "interval_s": interval,
        "intervals": rows, "verdict": judged, "sent": sent, "delivered_total": delivered,
        "missing": max(0, sent - delivered), "drain_s": drain_s,
        "commands_sent": commands["sent"],
        "churn_reconnects": sum(s["churn_drops"] for s in stopped),
        "reloads": reloads[:3] + (["..."] if len(reloads) > 3 else []),
        "agent_errors": [e for s in stopped for e in s["errors"]][:5],
        "duration_s": time.monotonic() - go,
    }
    session.say("soak:\n" + format_table(res))
    return res


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat or not, and why (the module docstring's rules); ``flat`` is None with fewer
    than three intervals (nothing to compare)."""
    out: dict[str, Any] = {"flat": None, "reasons": []}
    if len(rows) < 3:
        out["reasons"].append("fewer than 3 intervals")
        return out
    second, last = rows[1], rows[-1]
    reasons = []
    for key in ("rss_mb", "fds"):
        a, b = second[key], last[key]
        change = (b - a) / a if a else 0.0
        out[f"{key}_change"] = change
        if abs(change) > 0.05:
            reasons.append(f"{key} {a:.1f} -> {b:.1f} ({change:+.1%}) beyond 5 %")
    half = len(rows) // 2
    first, later = rows[1:half + 1] or rows[:1], rows[half + 1:] or rows[-1:]
    for key in ("queue_bytes", "unconfirmed_bytes", "replay_records_master"):
        a_vals = [r[key] for r in first if r.get(key) is not None]
        b_vals = [r[key] for r in later if r.get(key) is not None]
        slack = RECORDS_SLACK if key.endswith("records_master") else BYTES_SLACK
        if a_vals and b_vals and max(b_vals) > 2 * max(a_vals) + slack:
            reasons.append(f"{key} grew: max {max(a_vals):.0f} -> {max(b_vals):.0f}")
    a_p99 = [r["latency_ms_p99"] for r in first if r["latency_ms_p99"] is not None]
    b_p99 = [r["latency_ms_p99"] for r in later if r["latency_ms_p99"] is not None]
    if a_p99 and b_p99:
        out["p99_first_half_ms"] = statistics.median(a_p99)
        out["p99_second_half_ms"] = statistics.median(b_p99)
        if out["p99_second_half_ms"] > 2 * out["p99_first_half_ms"] + P99_SLACK_MS:
            reasons.append(f"p99 {out['p99_first_half_ms']:.1f} -> "
                           f"{out['p99_second_half_ms']:.1f} ms")
    else:
        reasons.append("no latency samples")
    out["reasons"] = reasons
    out["flat"] = not reasons
    return out


HEADER = (f"{'min':>4} {'RSS MB':>8} {'file MB':>7} {'fds':>6} {'queue B':>10} {'unconf B':>10} "
          f"{'replay B':>10} {'p50 ms':>7} {'p99 ms':>7} {'res/s':>7} {'agents':>6} "
          f"{'cmds':>6} {'reloads':>7} {'cpu':>5} {'load':>5}")


def format_row(r: dict[str, Any]) -> str:
    return (f"{r['interval']:>4} {r['rss_mb']:>8.1f} {r.get('rss_file_mb', 0):>7.1f} "
            f"{r['fds']:>6} "
            f"{_fmt(r['queue_bytes'], '.0f'):>10} {_fmt(r['unconfirmed_bytes'], '.0f'):>10} "
            f"{_fmt(r['replay_bytes'], '.0f'):>10} {_fmt(r['latency_ms_p50']):>7} "
            f"{_fmt(r['latency_ms_p99']):>7} {r['delivered_per_s']:>7.0f} "
            f"{r['agents_up']:>6} {_fmt(r['commands_relayed'], '.0f'):>6} "
            f"{_fmt(r['reloads_ok'], '.0f'):>7} {_fmt(r.get('node_cpu_cores'), '.2f'):>5} "
            f"{r.get('loadavg', 0):>5.1f}")


def format_table(res: dict[str, Any]) -> str:
    """The per-interval table and the verdict, as in perf/RESULTS.md."""
    v = res["verdict"]
    lines = [HEADER, *(format_row(r) for r in res["intervals"])]
    flat = {True: "flat", False: "NOT flat", None: "not judged"}[v["flat"]]
    lines.append(f"verdict: {flat}" + (f" ({'; '.join(v['reasons'])})" if v["reasons"]
                                        else ""))
    lines.append(f"sent {res['sent']}, delivered {res['delivered_total']}, missing "
                 f"{res['missing']}, commands sent {res['commands_sent']}, churn reconnects "
                 f"{res['churn_reconnects']}")
    return "\n".join(lines)


def main() -> None:
    """``python perf/soak.py``: the soak alone (``router perf --scenario soak`` with the
    same options does the same), the table on stdout, every number with ``--json``."""
    import click

    from perf.tool import Options, run

    @click.command()
    @click.option("--endpoints", type=int, default=5000, show_default=True)
    @click.option("--rate", type=float, default=5000.0, show_default=True,
                  help="Results/s in total.")
    @click.option("--duration", type=float, default=600.0, show_default=True)
    @click.option("--interval", type=float, default=60.0, show_default=True,
                  help="Seconds per row (a 'minute').")
    @click.option("--against", type=click.Choice(["icinga2"]))
    @click.option("--icinga-only", is_flag=True, help="Only the Icinga 2 session.")
    @click.option("--json", "json_path")
    def cli(endpoints: int, rate: float, duration: float, interval: float,
            against: str | None, icinga_only: bool, json_path: str | None) -> None:
        opts = Options(endpoints=endpoints, rate=rate, duration=duration,
                       scenarios=("soak",), against=against, json_path=json_path,
                       soak_interval=interval)
        if icinga_only:
            opts.against = "icinga2"
            opts.only_against = True
        result = run(opts)
        for s in result["sessions"]:
            if "soak" in s:
                click.echo(f"# {s['target']} ({s.get('version')}): {endpoints} agents, "
                           f"{rate:g} results/s, interval {interval:g} s")
                click.echo(format_table(s["soak"]))

    cli()


if __name__ == "__main__":
    main()
