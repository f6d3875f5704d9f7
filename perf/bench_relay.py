#!/usr/bin/env python3
"""Relay throughput of one satellite: N TLS agents -> satellite -> parent, router vs Icinga 2.

What runs (everything on 127.0.0.1, one CA from ``router.pki``, EC P-256 keys):

* the **node under test**, in its own process(es): our router (``python -m router serve
  --config FILE``, a generated TOML) or a real Icinga 2 daemon (started with
  ``perf/icinga.py``, log severity ``information``, no CheckerComponent, one
  Host ``agent-NNN`` and Service ``agent-NNN!svc`` per agent zone). Both are endpoint
  ``sat1`` in zone ``satellite`` below zone ``master``, with one child zone ``agent-NNN``
  (endpoint ``agent-NNN``) per agent;
* ``--workers`` **load processes** (multiprocessing, spawn), each with its share of the
  ``--agents`` emulated agents. Every agent has its own certificate and TLS session and
  sends ``event::CheckResult`` for ``agent-NNN!svc``: ``--batch`` frames per ``write``,
  then ``await writer.drain()`` (TCP backpressure), either as fast as the node takes them
  (default) or at ``--rate`` msg/s in total. ``ts`` and ``cr.execution_start`` strictly
  increase per agent (Icinga drops older ones). Agent sockets get a fixed 64 KiB send
  buffer (``--agent-sndbuf``) so the generator does not first fill 100 x 4 MiB of kernel
  buffers; the node's receive buffers still autotune (about 2 MiB per agent here);
* the emulated **parent** ``master`` in this (the main) process: it dials the satellite,
  counts the ``event::CheckResult`` frames it receives (every 64th one is fully parsed:
  host, service, latency = arrival - ``cr.execution_end``) and sends
  ``log::SetLogPosition`` once a second, as an Icinga master does.

Per target: start the node, connect the parent, connect the agents, wait until the node
reports every agent connected, start sending, ``--warmup`` seconds, then a ``--duration``
measurement window, then stop the agents and wait (up to ``--drain`` s) for the backlog.

Columns of the table (all measured in the window):

* delivered msg/s: CheckResults that reached the parent / window;
* accepted msg/s: CheckResults the agents wrote / window; once the socket buffers are
  full (after the warm-up) this is the node's ingest rate;
* node CPU s/10k msgs: user+system CPU of the node's process tree (psutil) per 10 000
  delivered messages (the JSON also has it per 10 000 accepted);
* node CPU cores, node RSS MB (peak of the tree's summed RSS, sampled every 0.5 s);
* latency p50 s: arrival at the parent - ``execution_end`` stamped by the agent, for the
  sampled messages that arrived in the window. Under saturation this is mostly the time
  the message waited in the node's socket receive buffer.

Below the table: the generator's own CPU (each load process, the parent/main process),
how busy the machine was, totals (sent, delivered, coalesced by the node) and the end-to-
end rate (everything delivered / time from the start of sending to the last delivery).
Warnings flag a saturated generator, a busy machine, CPU used by processes outside the
benchmark, messages that never arrived, and results the node coalesced. The last line of
the table is the ratio router/icinga; both targets get the same load, one after the other,
in the same run.

Usage::

    python perf/bench_relay.py [--agents 100] [--duration 10] [--warmup 3]
        [--payload-bytes 1024] [--rate MSG_PER_S] [--workers 2] [--batch 32]
        [--only router|icinga] [--json FILE] [--py-spy FILE] [--keep]
        [--parent-rate MSG_PER_S] [--router-cmd CMD] [--router-toml TOML] [--drain 30]
        [--agent-sndbuf 65536] [--icinga-log-severity information]

``--payload-bytes`` is the size of one agent's JSON message (the netstring payload); the
plugin output is padded to reach it. ``--py-spy FILE`` records the router with py-spy
(raw collapsed stacks, 100 Hz, non-blocking) during its window and prints the hottest
functions. ``--router-cmd`` runs another build of the router (e.g. a patched checkout:
``--router-cmd "python /path/to/wrapper.py"``, which must behave like ``python -m
router``); ``--router-toml`` appends TOML to the router's config (e.g. other
``[limits]``). ``--parent-rate`` makes the parent read at most that many messages per
second (a slow master, to see the node's backpressure and coalescing).
"""


from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import ctypes
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import psutil  # noqa: E402

# The shared pieces (PKI, targets, agents, parent, CPU helpers), re-exported by perf/common.py.
from perf.common import (  # noqa: E402
    SAT,
    MASTER,
    SAMPLE_EVERY,
    GEN_SATURATED,
    agent_name,
    raise_nofile,
    client_context,
    BenchPKI,
    make_pki,
    process_tree,
    Target,
    RouterTarget,
    IcingaTarget,
    load_worker,
    ParentProtocol,
    cpu_seconds,
    rss_bytes,
    all_cpu,
    machine_busy,
    stop_workers,
)
from perf.common import recv_from as _recv  # noqa: E402


async def _poll(predicate: Any, timeout: float, what: str, target: Target) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await asyncio.to_thread(predicate)
            if last:
                return last
        except Exception as exc:  # noqa: BLE001
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target.name}: timed out waiting for {what} "
                               f"(last: {last!r})\n{target.diagnostics()}")
        await asyncio.sleep(0.2)


async def router_counts(target: Target) -> dict[str, int]:
    """The router's own counters (received from agents, sent to and coalesced for master)."""
    if not isinstance(target, RouterTarget):
        return {}
    t0 = time.monotonic()
    try:
        status = await asyncio.to_thread(target.status)
    except Exception as exc:  # noqa: BLE001 - reported as a warning
        return {"error": f"{type(exc).__name__}: {exc} (after {time.monotonic() - t0:.1f} s)"}
    master = next(e for e in status["endpoints"] if e["name"] == MASTER)
    return {"received": sum(e["messages_received"] for e in status["endpoints"]
                            if e["name"].startswith("agent-")),
            "sent_to_master": master["messages_sent"], "coalesced": master["coalesced"],
            "dropped": master["dropped"], "refused": status["totals"]["messages_refused"],
            "stale_dropped": status["totals"]["stale_dropped"]}


async def icinga_queues(target: Target) -> dict[str, Any]:
    """Icinga's own queue lengths (/v1/status/ApiListener json_rpc): where a backlog sits."""
    if not isinstance(target, IcingaTarget):
        return {}
    try:
        status = await asyncio.to_thread(target.node.api_listener_status)
        return dict(status.get("json_rpc", {}))
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


async def run_target(target: Target, bench_pki: BenchPKI, args: argparse.Namespace
                     ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t_setup = time.monotonic()
    print(f"[{target.name}] starting the node ...", flush=True)
    target.start()        # blocking, from the main thread (Icinga's PDEATHSIG needs that)
    workers: list[tuple[Any, Any, Any]] = []
    parent: ParentProtocol | None = None
    pyspy: subprocess.Popen[bytes] | None = None
    try:
        ctx = client_context(bench_pki.ca_cert, bench_pki.cert(MASTER), bench_pki.key(MASTER))
        _, parent = await asyncio.wait_for(loop.create_connection(
            lambda: ParentProtocol(args.parent_rate), "127.0.0.1", target.port, ssl=ctx, server_hostname=SAT), 20)
        await _poll(lambda: MASTER in target.connected_endpoints(), 30,
                    "the parent connection", target)

        spawn = mp.get_context("spawn")
        shares = [list(range(args.agents))[k::args.workers] for k in range(args.workers)]
        for share in shares:
            if not share:
                continue
            here, there = spawn.Pipe()
            counter = spawn.RawArray(ctypes.c_longlong, 2)
            cfg = {"agents": share, "port": target.port, "ca": str(bench_pki.ca_cert),
                   "certs": str(bench_pki.out_dir), "payload_bytes": args.payload_bytes,
                   "batch": args.batch, "sndbuf": args.agent_sndbuf,
                   "rate_per_agent": args.rate / args.agents if args.rate else 0.0}
            proc = spawn.Process(target=load_worker, args=(cfg, there, counter), daemon=True)
            proc.start()
            workers.append((proc, here, counter))
        connect_errors: list[str] = []
        for proc, here, _ in workers:
            _, _, errors = await _recv(here, 60)
            connect_errors += errors
        if connect_errors:
            raise RuntimeError(f"{target.name}: {len(connect_errors)} agents failed to "
                               f"connect: {connect_errors[:5]}\n{target.diagnostics()}")
        wanted = {agent_name(i) for i in range(args.agents)}
        await _poll(lambda: wanted <= target.connected_endpoints(), 60,
                    f"{args.agents} agents connected", target)
        setup_s = time.monotonic() - t_setup

        root = target.root_pid()
        assert root is not None
        node_procs = process_tree(root)
        gen_procs = [psutil.Process(p.pid) for p, _, _ in workers]
        main_proc = psutil.Process()

        def snapshot() -> dict[str, Any]:
            busy, total = machine_busy()
            return {"t": time.monotonic(), "delivered": parent.check_results,  # type: ignore[union-attr]
                    "sent": sum(c[0] for _, _, c in workers),
                    "bytes_sent": sum(c[1] for _, _, c in workers),
                    "node_cpu": cpu_seconds(node_procs),
                    "gen_cpu": [cpu_seconds([p]) for p in gen_procs],
                    "main_cpu": cpu_seconds([main_proc]),
                    "machine_busy": busy, "machine_total": total,
                    "parent_bytes": parent.bytes}  # type: ignore[union-attr]

        print(f"[{target.name}] {args.agents} agents connected in {setup_s:.1f} s; "
              f"sending ({args.warmup:g} s warm-up, {args.duration:g} s measured) ...",
              flush=True)
        start_snap = snapshot()
        router_counts0 = await router_counts(target)
        for _, here, _ in workers:
            here.send("go")
        await asyncio.sleep(args.warmup)
        if args.py_spy and target.name == "router":
            pyspy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(root), "--duration", str(int(args.duration)),
                 "--rate", "100", "--format", "raw", "--nonblocking", "--output", args.py_spy],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        others0 = all_cpu()
        s0 = snapshot()
        rss_peak = 0
        rss_samples = []
        window_end = s0["t"] + args.duration
        per_second = []
        last = s0
        while True:
            now = time.monotonic()
            if now >= window_end:
                break
            await asyncio.sleep(min(0.5, window_end - now))
            rss = rss_bytes(node_procs)
            rss_samples.append(rss)
            rss_peak = max(rss_peak, rss)
            snap = snapshot()
            if snap["t"] - last["t"] >= 0.99:
                per_second.append((snap["delivered"] - last["delivered"])
                                  / (snap["t"] - last["t"]))
                last = snap
        s1 = snapshot()
        others1 = all_cpu()
        router_counts1 = await router_counts(target)
        icinga_json_rpc = await icinga_queues(target)
        for _, here, _ in workers:
            here.send("stop")
        stopped = [(await _recv(here, 30))[1] for _, here, _ in workers]
        total_sent = sum(s["sent"] for s in stopped)
        # The backlog in the sockets and in the node still arrives: wait until everything
        # sent arrived, or the node is idle (< 5 % CPU) and nothing arrived for 1 s, or
        # --drain seconds passed.
        drain_start = time.monotonic()
        previous, idle_since = parent.check_results, time.monotonic()
        cpu_before = cpu_seconds(node_procs)
        while time.monotonic() - drain_start < args.drain and parent.check_results < total_sent:
            await asyncio.sleep(0.5)
            cpu_now = cpu_seconds(node_procs)
            busy = cpu_now - cpu_before > 0.025
            cpu_before = cpu_now
            if parent.check_results != previous or busy:
                previous, idle_since = parent.check_results, time.monotonic()
            elif time.monotonic() - idle_since >= 1.0:
                break
        drain_s = time.monotonic() - drain_start
        total_delivered = parent.check_results
        router_counts2 = await router_counts(target)
        if pyspy is not None:
            try:
                _, err = pyspy.communicate(timeout=30)
                if pyspy.returncode != 0:
                    print(f"[router] py-spy failed: {err.decode(errors='replace')[-500:]}")
            except subprocess.TimeoutExpired:
                pyspy.kill()
    finally:
        await stop_workers(workers, "close", 10)
        if parent is not None and parent.transport is not None:
            parent.transport.close()
        print(f"[{target.name}] stopping the node ...", flush=True)
        target.stop()

    window = s1["t"] - s0["t"]
    delivered = s1["delivered"] - s0["delivered"]
    node_cpu = s1["node_cpu"] - s0["node_cpu"]
    gen_cpu = [b - a for a, b in zip(s0["gen_cpu"], s1["gen_cpu"])]
    main_cpu = s1["main_cpu"] - s0["main_cpu"]
    machine = ((s1["machine_busy"] - s0["machine_busy"])
               / max(1e-9, s1["machine_total"] - s0["machine_total"]))
    lat = sorted(x for t, x in parent.latencies if s0["t"] <= t <= s1["t"])
    ours = {p.pid for p in node_procs} | {p.pid for p in gen_procs} | {os.getpid()}
    outside = collections.Counter()
    for pid, (name, cpu) in others1.items():
        if pid not in ours and pid in others0:
            outside[f"{name}[{pid}]"] = (cpu - others0[pid][1]) / (s1["t"] - s0["t"])
    ours_cores = ((s1["node_cpu"] - s0["node_cpu"]) + sum(s1["gen_cpu"]) - sum(s0["gen_cpu"])
                  + s1["main_cpu"] - s0["main_cpu"]) / (s1["t"] - s0["t"])
    busy_cores = machine * (psutil.cpu_count() or 1)
    # CPU the machine spent that none of our processes account for: other processes
    # (also short-lived ones, which the per-process list misses) and kernel time.
    outside_cores = max(0.0, busy_cores - ours_cores)

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

    per_agent = collections.Counter()
    for s in stopped:
        per_agent.update(s["per_agent_sent"])
    warnings = []
    for k, c in enumerate(gen_cpu):
        if c / window > GEN_SATURATED:
            warnings.append(f"load process {k} used {c / window:.0%} of a core: the generator "
                            f"is saturated, the node may be faster than measured")
    if main_cpu / window > GEN_SATURATED:
        warnings.append(f"the parent/main process used {main_cpu / window:.0%} of a core: "
                        f"the parent may limit the rate")
    if machine > 0.97:
        warnings.append(f"the machine was {machine:.0%} busy ({psutil.cpu_count()} CPUs): "
                        f"node and generator compete for CPU")
    if outside_cores > 0.2:
        top = ", ".join(f"{n} {c:.2f}" for n, c in outside.most_common(3) if c >= 0.01)
        warnings.append(f"{outside_cores:.2f} cores of the machine's CPU during the window "
                        f"are not the node's or the generator's (other processes: "
                        f"{top or 'short-lived ones'}): the numbers are disturbed")
    if delivered == 0:
        warnings.append("nothing was delivered to the parent during the window")
    if parent.bad_samples:
        warnings.append(f"{len(parent.bad_samples)} sampled messages were malformed: "
                        f"{parent.bad_samples[:2]}")
    errs = [e for s in stopped for e in s["errors"]]
    if errs:
        warnings.append(f"{len(errs)} agents had send errors: {errs[:3]}")
    closed = [e for s in stopped for e in s["closed_by_peer"]]
    if closed:
        warnings.append(f"the node closed {len(closed)} agent connections: {closed[:5]}")
    for when, counts in (("at the start", router_counts0), ("at the end of the window",
                                                           router_counts1),
                         ("after the drain", router_counts2)):
        if "error" in counts:
            warnings.append(f"the router's status endpoint failed {when}: {counts['error']}")
    coalesced = router_counts2.get("coalesced", 0)
    if total_delivered + coalesced < total_sent and drain_s >= args.drain - 0.25:
        warnings.append(f"backlog not drained: {total_sent - total_delivered - coalesced} "
                        f"sent CheckResults had not reached the parent after {drain_s:.0f} s")
    elif total_delivered + coalesced < total_sent:
        warnings.append(f"messages lost: the parent got {total_delivered} of {total_sent} "
                        f"sent CheckResults ({coalesced} coalesced by the node) and nothing "
                        f"more arrived for 1 s")
    if coalesced:
        warnings.append(f"the node coalesced {coalesced} of {total_sent} CheckResults "
                        f"({coalesced / max(1, total_sent):.0%}): its queue to the parent was "
                        f"congested and newer results replaced queued ones")
    run_s = (parent.last_arrival - start_snap["t"]) if parent.last_arrival else 0.0
    result = {
        "target": target.name,
        "version": target.version(),
        "window_s": window,
        "delivered": delivered,
        "delivered_per_s": delivered / window,
        "delivered_per_s_each_second": [round(x) for x in per_second],
        "accepted_per_s": (s1["sent"] - s0["sent"]) / window,
        "offered_rate": args.rate or None,
        "sent_mib_per_s": (s1["bytes_sent"] - s0["bytes_sent"]) / window / 2**20,
        "parent_mib_per_s": (s1["parent_bytes"] - s0["parent_bytes"]) / window / 2**20,
        "node_cpu_s": node_cpu,
        "node_cpu_cores": node_cpu / window,
        "node_cpu_s_per_10k": node_cpu / delivered * 10_000 if delivered else None,
        "node_cpu_s_per_10k_accepted": (node_cpu / (s1["sent"] - s0["sent"]) * 10_000
                                        if s1["sent"] > s0["sent"] else None),
        "node_rss_mb_peak": rss_peak / 2**20,
        "node_rss_mb_end": (rss_samples[-1] / 2**20) if rss_samples else None,
        "node_processes": len(node_procs),
        "generator_cpu_cores": [c / window for c in gen_cpu],
        "parent_main_cpu_cores": main_cpu / window,
        "machine_busy_fraction": machine,
        "outside_cpu_cores": outside_cores,
        "outside_top": dict(outside.most_common(5)),
        "total_sent": total_sent,
        "total_delivered": total_delivered,
        "drain_s": drain_s,
        "all_delivered": total_delivered >= total_sent,
        "coalesced_by_node": coalesced,
        "end_to_end_s": run_s,
        "end_to_end_delivered_per_s": total_delivered / run_s if run_s else None,
        "router_counters": {"go": router_counts0, "window_end": router_counts1,
                            "after_drain": router_counts2},
        "in_flight_at_window_end": s1["sent"] - s1["delivered"],
        "icinga_json_rpc_at_window_end": icinga_json_rpc,
        "sent_before_window": s0["sent"] - start_snap["sent"],
        "per_agent_sent_min": min(per_agent.values()) if per_agent else 0,
        "per_agent_sent_max": max(per_agent.values()) if per_agent else 0,
        "sampled_messages": parent.sampled,
        "sampled_agents_seen": len(parent.sample_hosts),
        # every 64th delivered message, per agent: min/max over all agents (0 = starved)
        "sampled_delivered_per_agent_min": min(parent.sample_hosts.get(agent_name(i), 0)
                                               for i in range(args.agents)),
        "sampled_delivered_per_agent_max": max(parent.sample_hosts.values(), default=0),
        "latency_samples_in_window": len(lat),
        "latency_s_p50": pct(0.50),
        "latency_s_p99": pct(0.99),
        "other_methods_at_parent": dict(parent.methods),
        "setup_s": setup_s,
        "warnings": warnings,
    }
    print(f"[{target.name}] {result['delivered_per_s']:.0f} msg/s delivered, node CPU "
          f"{result['node_cpu_cores']:.2f} cores, RSS {result['node_rss_mb_peak']:.0f} MB",
          flush=True)
    for w in warnings:
        print(f"[{target.name}] WARNING: {w}", flush=True)
    return result


# ======================================================================================
# Report
# ======================================================================================

ENTRY_FRAMES = ("(<frozen runpy>)", "(core.py)", "(__main__.py)", "(cli.py)", "(runners.py)",
                "serve (app.py)", "run (__init__.py)", "(run_patched.py)")


def summarize_pyspy(path: str, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(n)
            total += count
            frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                      + ")" if " (" in f else f for f in stack.split(";")]
            self_count[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    lines = [f"py-spy: {total} samples of the router process"]
    lines.append("self%   function (file)")
    for f, c in self_count.most_common(top):
        lines.append(f"{100 * c / total:5.1f}   {f}")
    lines.append("")
    lines.append("incl%   function (file)   (start-up frames: click, runpy, asyncio runner "
                 "left out)")
    shown = [(f, c) for f, c in incl.most_common() if not f.endswith(ENTRY_FRAMES)][:top]
    for f, c in shown:
        lines.append(f"{100 * c / total:5.1f}   {f}")
    return "\n".join(lines)


def print_table(results: list[dict[str, Any]]) -> None:
    cols = [("target", 8, "s"), ("delivered msg/s", 16, ".0f"), ("accepted msg/s", 15, ".0f"),
            ("node CPU s/10k msgs", 20, ".3f"), ("node CPU cores", 15, ".2f"),
            ("node RSS MB", 12, ".1f"), ("latency p50 s", 14, ".2f")]
    keys = ["target", "delivered_per_s", "accepted_per_s", "node_cpu_s_per_10k",
            "node_cpu_cores", "node_rss_mb_peak", "latency_s_p50"]

    def cell(value: Any, width: int, fmt: str) -> str:
        text = "-" if value is None else format(value, fmt)
        return text.ljust(width) if fmt == "s" else text.rjust(width)

    print()
    print(" ".join(name.ljust(w) if i == 0 else name.rjust(w)
                   for i, (name, w, _) in enumerate(cols)))
    for r in results:
        print(" ".join(cell(r[k], w, f) for k, (_, w, f) in zip(keys, cols)))
    by = {r["target"]: r for r in results}
    if "router" in by and "icinga" in by:
        a, b = by["router"], by["icinga"]
        cells = [cell("ratio", 8, "s")]
        for k, (_, w, _) in zip(keys[1:], cols[1:]):
            x, y = a[k], b[k]
            cells.append(cell(x / y if x is not None and y else None, w, ".2f"))
        print(" ".join(cells))
        print("ratio = router/icinga: above 1 is better for msg/s, below 1 is better for CPU "
              "per message, RSS and latency")
    print("delivered = CheckResults the parent received in the window; accepted = what the "
          "agents wrote in the window (node ingest once the socket buffers are full); CPU "
          "s/10k is per 10 000 delivered messages; RSS is the peak during the window")
    for r in results:
        gen = " + ".join(f"{c:.2f}" for c in r["generator_cpu_cores"])
        extra = (f", {r['coalesced_by_node']} coalesced by the node"
                 if r["coalesced_by_node"] else "")
        e2e = r["end_to_end_delivered_per_s"]
        print(f"  {r['target']}: generator CPU {gen} cores (load processes), "
              f"{r['parent_main_cpu_cores']:.2f} (parent/main); machine "
              f"{r['machine_busy_fraction']:.0%} busy; CPU s/10k accepted "
              f"{format(r['node_cpu_s_per_10k_accepted'] or 0, '.3f')}; sent {r['total_sent']}, "
              f"delivered {r['total_delivered']}{extra}; last delivery "
              f"{r['end_to_end_s']:.1f} s after the start ({format(e2e or 0, '.0f')} msg/s "
              f"end to end); latency p99 {format(r['latency_s_p99'] or 0, '.2f')} s; "
              f"per agent: sent {r['per_agent_sent_min']}..{r['per_agent_sent_max']}, "
              f"delivered (1/{SAMPLE_EVERY} sample) {r['sampled_delivered_per_agent_min']}.."
              f"{r['sampled_delivered_per_agent_max']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up before the window, s")
    ap.add_argument("--payload-bytes", type=int, default=1024,
                    help="size of one agent message (JSON), padded in the plugin output")
    ap.add_argument("--workers", type=int, default=2, help="load processes")
    ap.add_argument("--batch", type=int, default=32, help="frames per write+drain")
    ap.add_argument("--agent-sndbuf", type=int, default=65536,
                    help="SO_SNDBUF of each agent socket, bytes (0: kernel autotuning)")
    ap.add_argument("--drain", type=float, default=30.0,
                    help="after the window, wait up to this long for the backlog, s")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered load in msg/s over all agents (0: as fast as accepted)")
    ap.add_argument("--parent-rate", type=float, default=0.0,
                    help="the parent reads at most this many msg/s (a slow master; 0: "
                         "as fast as it can)")
    ap.add_argument("--router-toml", default="",
                    help="TOML appended to the router's config, e.g. '[limits]\\n"
                         "send_queue_high_messages = 100000' (experiments)")
    ap.add_argument("--router-cmd", default="",
                    help="command that runs the router CLI (default: 'PYTHON -m router'); "
                         "'serve --config FILE' is appended (e.g. a patched build)")
    ap.add_argument("--only", choices=["router", "icinga"])
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    ap.add_argument("--py-spy", metavar="FILE",
                    help="record the router with py-spy (raw format) during its window")
    ap.add_argument("--icinga-log-severity", default="information",
                    help="Icinga FileLogger severity (the harness default is debug)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.agents < 1 or args.agents > 1000:
        ap.error("--agents must be 1..1000")
    if args.py_spy and shutil.which("py-spy") is None:
        ap.error("--py-spy needs py-spy on PATH (pip install py-spy)")
    raise_nofile()
    import uvloop

    busy0 = machine_busy()
    time.sleep(1.0)
    busy1 = machine_busy()
    idle_check = (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1])
    if idle_check > 0.10:
        print(f"WARNING: the machine is already {idle_check:.0%} busy before the benchmark "
              f"starts; results will be disturbed", flush=True)
    base = Path(tempfile.mkdtemp(prefix="bench_relay-"))
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        bench_pki = make_pki(base, args.agents)
        kinds = [args.only] if args.only else ["router", "icinga"]
        for kind in kinds:
            if kind == "router":
                target: Target = RouterTarget(base, bench_pki, args.agents, args.router_toml,
                                              args.router_cmd)
            else:
                target = IcingaTarget(base, bench_pki, args.agents, args.icinga_log_severity)
            results.append(uvloop.run(run_target(target, bench_pki, args)))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    import uvloop as _uv
    meta = {
        "benchmark": "relay", "agents": args.agents, "duration_s": args.duration,
        "warmup_s": args.warmup, "payload_bytes": args.payload_bytes,
        "workers": args.workers, "batch": args.batch,
        "cpus": psutil.cpu_count(), "python": platform.python_version(),
        "uvloop": _uv.__version__, "orjson": orjson.__version__,
        "total_run_s": time.monotonic() - started,
        "machine_busy_before_start": idle_check,
    }
    print(f"\n# relay benchmark: {args.agents} agents ({args.workers} load processes), "
          f"{args.payload_bytes}-byte CheckResults, {args.warmup:g} s warm-up + "
          f"{args.duration:g} s window; {meta['cpus']} CPUs, python {meta['python']}, "
          f"uvloop {meta['uvloop']}, orjson {meta['orjson']}")
    for r in results:
        print(f"# {r['target']}: {r['version']}")
    print_table(results)
    for r in results:
        for w in r["warnings"]:
            print(f"WARNING [{r['target']}]: {w}")
    if args.py_spy and os.path.exists(args.py_spy):
        print()
        print(summarize_pyspy(args.py_spy))
    print(f"\ntotal run time {meta['total_run_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
