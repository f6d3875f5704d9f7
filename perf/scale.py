"""Scenarios of ``router perf`` for issue 22 (scale): commands down, an agents' storm.

* ``down``: the emulated parent (``master`` in the direct topology, the master's zone peer
  ``master2`` in the chain) sends ``event::ExecuteCommand`` for every agent, in rounds, as
  fast as its connection takes them; the agents count the frames they receive. Reported:
  messages/s from the first write until the last agent frame, and the node's CPU per
  message (per node in the chain).
* ``agentstorm``: every agent drops its session at the same moment and dials again (a
  random 0-0.5 s first, as in ``storm``), then sends at once the results an agent's replay
  log would hold after the outage: ``rate / N x replay_cut`` each (at least 1). Reported:
  the time from the drop until all agents are identified again, and until all those
  replayed results have been processed (arrived at the parent), and the node's CPU.

:func:`cpu_split` gives the node CPU per routed result for each process of the node
under test (the satellite and the master in the chain).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from perf.load import C_RECEIVED
from perf.measure import cpu_seconds, rss_bytes
from perf.report import fmt_or_dash as _fmt
from perf.targets import node_counters
from perf.wire import SERVICE, agent_name, netstring

__all__ = ["ProfileRun", "agentstorm_phase", "cpu_by_node", "cpu_split", "down_phase",
           "execute_command_frames", "node_cpu_each"]


def cpu_by_node(session: Any, before: list[float], after: list[float]) -> dict[str, float]:
    """CPU seconds per node process between two :func:`node_cpu_each` (name -> s)."""
    parts: dict[int, str] = getattr(session.target, "parts", dict)()
    out: dict[str, float] = {}
    for proc, a, b in zip(session.node_procs, before, after):
        name = parts.get(proc.pid, f"pid {proc.pid}")
        out[name] = out.get(name, 0.0) + (b - a)
    return out


def cpu_split(session: Any, before: list[float], after: list[float], done: int
              ) -> dict[str, float | None]:
    """CPU µs per message (``done`` of them) for each node process (name -> µs)."""
    return {k: (v / done * 1e6 if done else None)
            for k, v in cpu_by_node(session, before, after).items()}


def node_cpu_each(session: Any) -> list[float]:
    return [cpu_seconds([p]) for p in session.node_procs]


def execute_command_frames(n: int, round_no: int, now: float) -> list[bytes]:
    """One ``event::ExecuteCommand`` per agent, for the agent's own endpoint; each its own
    ``ts`` (a microsecond apart, from ``now``): a node drops a message whose ``ts`` is not
    newer than the last one it took from that peer, as Icinga does."""
    frames = []
    for i in range(n):
        ts = now + i * 1e-6
        agent = agent_name(i)
        frames.append(netstring(orjson.dumps({
            "jsonrpc": "2.0", "method": "event::ExecuteCommand",
            "params": {"command_type": "check_command", "command": "dummy",
                       "endpoint": agent, "host": agent, "service": SERVICE,
                       "macros": {"dummy_state": 0, "dummy_text": "perf"},
                       "source": f"perf-{round_no}-{i}", "deadline": ts + 300,
                       "check_timeout": 60},
            "ts": ts})))
    return frames


async def down_phase(session: Any) -> dict[str, Any]:
    """ExecuteCommand to every agent, from the parent, flat out; time until all arrived."""
    opts = session.opts
    n = opts.endpoints
    if getattr(session.target, "count_only", False):
        return {"scenario": "down", "skipped": "the floor relays nothing"}
    parent = session.parent
    assert parent is not None and parent.transport is not None
    total_wanted = max(n, int((opts.rate or 5000.0) * opts.duration))
    rounds = math.ceil(total_wanted / n)
    total = rounds * n
    received0 = session.counter_sum(C_RECEIVED)
    cpu0 = node_cpu_each(session)
    busy0 = session.snapshot()
    t0 = time.monotonic()
    transport = parent.transport
    last = time.time()
    for r in range(rounds):
        last = max(time.time(), last + n * 1e-6)
        frames = execute_command_frames(n, r, last)
        # whole frames per write: the parent's own log::SetLogPosition timer writes on
        # the same connection between our writes
        for k in range(0, len(frames), 2000):
            while transport.get_write_buffer_size() > 8 << 20 and not transport.is_closing():
                await asyncio.sleep(0.005)
            transport.write(b"".join(frames[k:k + 2000]))
    written_s = time.monotonic() - t0
    deadline = t0 + max(60.0, opts.drain)
    got, last, since = 0, -1, time.monotonic()
    while time.monotonic() < deadline:
        got = session.counter_sum(C_RECEIVED) - received0
        if got >= total:
            break
        if got != last:
            last, since = got, time.monotonic()
        elif time.monotonic() - since > 5.0:
            break
        await asyncio.sleep(0.02)
    took = time.monotonic() - t0
    cpu1 = node_cpu_each(session)
    busy1 = session.snapshot()
    cpu = sum(cpu1) - sum(cpu0)
    res = {
        "scenario": "down", "messages": total, "rounds": rounds, "received": got,
        "written_s": written_s, "all_received_s": took if got >= total else None,
        "messages_per_s": got / took if took else None,
        "node_cpu_us_per_message": cpu / got * 1e6 if got else None,
        "node_cpu_us_per_message_each": cpu_split(session, cpu0, cpu1, got),
        "node_cpu_cores": cpu / took if took else None,
        "machine_busy": (busy1["busy"] - busy0["busy"])
        / max(1e-9, busy1["total"] - busy0["total"]),
        "node_rss_mb": rss_bytes(session.node_procs) / 2**20,
    }
    if got < total:
        session.warn(f"down: {total - got} of {total} ExecuteCommands did not reach the "
                     f"agents within {took:.0f} s")
    session.say(f"down: {got} ExecuteCommands to {n} agents in {took:.2f} s, "
                f"{_fmt(res['messages_per_s'], '.0f')}/s")
    return res


async def agentstorm_phase(session: Any) -> dict[str, Any]:
    """All agents drop at once and come back with a backlog each; time both."""
    opts = session.opts
    n = opts.endpoints
    backlog = max(1, round((opts.rate or 5000.0) / n * opts.replay_cut))
    t = session.tally
    deliv0 = t.check_results
    count_only = getattr(session.target, "count_only", False)
    if not count_only:
        # Count only results stamped from the drop on (the replayed ones): a slow node
        # may still be delivering an earlier scenario's backlog.
        t.parse_every = 1
        t.keys = {}
        t.keys_since = time.time()

    def arrived_now() -> int:
        if count_only:
            return int(t.check_results - deliv0)
        return len(t.keys) if t.keys is not None else 0

    counters0 = await asyncio.to_thread(node_counters, session.target)
    cpu0 = node_cpu_each(session)
    busy0 = session.snapshot()
    t0 = time.monotonic()
    replies = await session.ask_all(("agentstorm", backlog), 30)     # ("dropped", k)
    dropped_s = time.monotonic() - t0
    timeout = session.connect_timeout()
    took, got = await session.wait_connected(n, timeout, "agentstorm reconnect")
    back_s = (time.monotonic() - t0) if took is not None else None
    want = n * backlog
    done_s = None
    last, since = -1, time.monotonic()
    while time.monotonic() - t0 < timeout + opts.drain:
        arrived = arrived_now()
        if arrived >= want:
            done_s = time.monotonic() - t0
            break
        if arrived != last:
            last, since = arrived, time.monotonic()
        elif time.monotonic() - since > 10.0:
            break
        await asyncio.sleep(0.02)
    cpu1 = node_cpu_each(session)
    busy1 = session.snapshot()
    from perf.workers import recv_from
    stormed = [await recv_from(pipe, timeout) for _, pipe, _ in session.workers]
    sent = sum(s[1] for s in stormed)
    arrived = arrived_now()
    t.keys = None
    # Results the node replaced by a newer one for the same service while its queue to
    # the parent was congested (our router's coalescing) were processed too.
    counters1 = await asyncio.to_thread(node_counters, session.target)
    coalesced = int(counters1.get("coalesced", 0) or 0) - int(counters0.get("coalesced", 0)
                                                             or 0)
    if done_s is None and arrived + coalesced >= want and t.last_arrival > t0:
        done_s = t.last_arrival - t0
    res = {
        "scenario": "agentstorm", "agents": n, "backlog_per_agent": backlog,
        "backlog": want, "sent": sent, "arrived": arrived, "coalesced": coalesced,
        "drop_s": dropped_s, "all_back_s": back_s, "reconnected": got,
        "all_processed_s": done_s,
        "node_cpu_s": sum(cpu1) - sum(cpu0),
        "node_cpu_s_each": cpu_by_node(session, cpu0, cpu1),
        "machine_busy": (busy1["busy"] - busy0["busy"])
        / max(1e-9, busy1["total"] - busy0["total"]),
        "node_rss_mb": rss_bytes(session.node_procs) / 2**20,
        "agent_errors": [e for s in stormed for e in s[2]][:5],
        "dropped": sum(r[1] for r in replies),
    }
    if took is None:
        session.warn(f"agentstorm: only {got} of {n} agents back after {timeout:.0f} s")
    if done_s is None:
        session.warn(f"agentstorm: {arrived} of {want} replayed results arrived "
                     f"({coalesced} coalesced by the node)")
    session.say(f"agentstorm: all {n} back in {_fmt(back_s, '.2f')} s, their {want} "
                f"replayed results processed {_fmt(done_s, '.2f')} s after the drop")
    return res


class ProfileRun:
    """py-spy on every node process for one load window (``--py-spy DIR``).

    Records a flame graph (SVG) per node process and scenario into DIR, named
    ``TARGET-SCENARIO-NODE.svg``; non-blocking sampling at 100 Hz, so the node is not
    paused (its cost is py-spy's own CPU, outside the node's process).
    """

    def __init__(self, session: Any, scenario: str, seconds: float) -> None:
        self.procs: list[tuple[Path, subprocess.Popen[bytes]]] = []
        out_dir = session.opts.py_spy
        if not out_dir or getattr(session.target, "count_only", False):
            return
        if session.target.name == "icinga":
            return
        parts = getattr(session.target, "parts", dict)() or {
            session.target.root_pid(): session.target.name}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for pid, node in parts.items():
            if pid is None:
                continue
            path = Path(out_dir) / f"{session.target.name}-{scenario}-{node}.svg"
            self.procs.append((path, subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--duration",
                 str(max(1, int(seconds))), "--rate", "100", "--nonblocking",
                 "--format", "flamegraph", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))

    async def finish(self) -> list[str]:
        """Wait for the recorders; the SVG files written."""
        done = []
        for path, proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if path.exists():
                done.append(str(path))
        return done
