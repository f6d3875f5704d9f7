"""``router perf``: N emulated agents -> node under test -> emulated parent, scenario by scenario.

One *session* per target (our router, and with ``against="icinga2"`` a real Icinga 2 under
the same load in the same run): start the node (or use ``target=HOST:PORT``), connect the
emulated parent, connect all N agents (time until the node reports all of them connected
and identified), then run the scenarios one after the other on the same connections:

* ``steady``: ``rate`` results/s in total (paced per agent) for warm-up + window;
* ``churn``: ``rate`` results/s while a fraction of the agents keep dropping and redialling;
* ``replay``: ``rate`` results/s while the parent is cut off for ``replay_cut`` seconds;
  then the load stops, the parent returns, and we time until every result sent arrived
  (count check per agent: none missing, duplicates counted);
* ``max``: flat out (every agent writes as fast as the node reads); a slow node keeps a
  backlog after it, hence it runs after the paced scenarios with ``all``;
* ``storm``: the node restarts; time until all N agents are back (they redial with a
  random 0-0.5 s delay, then back off up to 2 s), counted from the start of the restart,
  from the moment the node's port opens, and from its ready signal. The agents are
  watched from the moment the node is started, not after the parent has dialled in.

Everything runs on 127.0.0.1 and is bounded in time. ``run()`` is the Python API; the CLI
(``router perf``, in router/cli.py) only parses options and calls it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from perf.common import (
    HELLO,
    MASTER,
    SAT,
    SERVICE,
    BenchPKI,
    IcingaTarget,
    RouterTarget,
    Target,
    _tree,
    agent_name,
    client_context,
    cpu_seconds,
    log_position_frame,
    machine_busy,
    make_pki,
    raise_nofile,
    rss_bytes,
    scan_frames,
    stop_workers,
    write_agent_chain,
)
from perf.common import recv_from as _recv
from perf.load import C_CLOSED_BY_PEER, C_IDENTIFIED, C_SENT, N_COUNTERS, load_worker

#: order of --scenario all: max leaves a backlog in a slow node, storm restarts the node
SCENARIOS = ("steady", "churn", "replay", "max", "storm")
GEN_SATURATED = 0.90
#: Above this share of all CPUs busy, a wall time measures the machine, not only the node.
MACHINE_SATURATED = 0.90


@dataclass
class Options:
    endpoints: int = 5000
    rate: float | None = 5000.0          # results/s in total; None = max (flat out)
    duration: float = 10.0
    warmup: float = 3.0
    payload_bytes: int = 1024
    scenarios: tuple[str, ...] = ("steady",)
    target: str | None = None            # HOST:PORT of an existing node
    pki_dir: str | None = None           # its CA (ca.crt + ca.key) for --target
    status_url: str | None = None        # our router's status URL for --target (optional)
    against: str | None = None           # "icinga2": same workload against real Icinga 2
    workers: int = 0                     # load processes (0: one per core)
    batch: int = 32
    sndbuf: int = 65536
    replay_cut: float = 5.0
    churn_fraction: float = 0.1
    connect_timeout: float = 0.0         # 0: scaled with N
    drain: float = 30.0
    json_path: str | None = None
    keep: bool = False
    router_toml: str = ""                # appended to the demo router's configuration
    key_type: str = "ec"                 # every key: ec, rsa (2048) or rsa4096 (Icinga's)
    progress: bool | None = None         # None: when stderr is a terminal


# ======================================================================================
# Output: progress bar on a terminal, plain lines otherwise
# ======================================================================================

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


# ======================================================================================
# The emulated parent
# ======================================================================================

@dataclass
class Tally:
    """What the parent received; survives the parent's reconnect (replay)."""
    check_results: int = 0
    other: int = 0
    methods: collections.Counter = field(default_factory=collections.Counter)
    parse_every: int = 1
    #: (arrival monotonic, latency s) of parsed results
    latencies: list = field(default_factory=list)
    bad: list = field(default_factory=list)
    last_ts: float = 0.0
    #: results ignored because their ts was older than last_ts (Icinga's receive rule)
    ignored_older: int = 0
    last_arrival: float = 0.0
    #: replay: (host, execution_end) -> times received; None when not tracking
    keys: dict | None = None
    #: replay: only results stamped at or after this wall clock time count (the phase's)
    keys_since: float = 0.0


class PerfParent(asyncio.Protocol):
    """Endpoint ``master`` dialled into the node: counts results, parses (some of) them."""

    def __init__(self, tally: Tally) -> None:
        self.t = tally
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(HELLO)
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def _set_log_position(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(log_position_frame(self.t.last_ts))
        self._timer = asyncio.get_running_loop().call_later(1.0, self._set_log_position)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._now = time.monotonic()
        self.t.other += scan_frames(self.buf, self.t.methods, self._check_result)

    def _check_result(self, buf: bytearray, start: int, end: int) -> None:
        t = self.t
        t.check_results += 1
        t.last_arrival = self._now
        if t.keys is not None or t.check_results % t.parse_every == 0:
            self._parse(bytes(buf[start:end]), self._now)

    def _parse(self, payload: bytes, now_m: float) -> None:
        t = self.t
        try:
            msg = orjson.loads(payload)
            params = msg["params"]
            host, end = params["host"], params["cr"]["execution_end"]
            if params.get("service") != SERVICE or not host.startswith("agent-"):
                t.bad.append(payload[:200].decode(errors="replace"))
            ts = float(msg.get("ts") or 0)
            if ts < t.last_ts:
                # Icinga's JsonRpcConnection ignores a message older than the newest ts
                # it processed from that endpoint; a replay may resend what we have.
                t.ignored_older += 1
                return
            t.latencies.append((now_m, time.time() - float(end)))
            t.last_ts = ts
            if t.keys is not None and float(end) >= t.keys_since:
                key = (host, end)
                t.keys[key] = t.keys.get(key, 0) + 1
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            if len(t.bad) < 10:
                t.bad.append(payload[:200].decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)


# ======================================================================================
# Targets: how many agents the node has connected
# ======================================================================================

class ExternalTarget(Target):
    """An existing node at HOST:PORT (``--target``); it must know ``master`` and the agents."""

    name = "target"

    def __init__(self, host: str, port: int, status_url: str | None) -> None:
        self.host, self.port, self.status_url = host, port, status_url

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def root_pid(self) -> int | None:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port:
                return conn.pid
        return None

    def version(self) -> str:
        return f"existing node at {self.host}:{self.port}"


def node_connected(target: Target) -> int | None:
    """Agents the node itself reports connected and identified (None: it cannot tell);
    minus one for the parent."""
    if isinstance(target, RouterTarget):
        return int(target.status("sections=connections")["connections"]["established"]) - 1
    if isinstance(target, IcingaTarget):
        return int(target.node.api_listener_status().get("num_conn_endpoints", 0)) - 1
    if isinstance(target, ExternalTarget) and target.status_url:
        import urllib.request
        with urllib.request.urlopen(target.status_url.rstrip("/")
                                    + "/v1/status?sections=connections", timeout=5) as resp:
            return int(orjson.loads(resp.read())["connections"]["established"]) - 1
    return None


def node_counters(target: Target) -> dict[str, Any]:
    """Refusals and coalescing as the node counts them (our router only)."""
    try:
        if isinstance(target, RouterTarget):
            st = target.status(f"sections=totals,endpoints&endpoint={MASTER}")
            master = next((e for e in st["endpoints"] if e["name"] == MASTER), {})
            return {"refused": st["totals"]["messages_refused"],
                    "coalesced": master.get("coalesced", 0),
                    "dropped": master.get("dropped", 0)}
    except Exception as exc:  # noqa: BLE001 - reported
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {}


def listening(port: int) -> bool | None:
    """Whether a TCP socket listens on ``port`` (any address), from /proc/net/tcp{,6}.

    Read from the kernel's table rather than by connecting: a probe connection would be
    one more client the node under test has to accept and log. A listening socket is the
    row with this local port, a remote address of zeros and state 0A; one substring search
    keeps a poll cheap while thousands of agent sockets fill the table. None where there
    is no /proc (not Linux).
    """
    v4 = f":{port:04X} 00000000:0000 0A ".encode()
    v6 = f":{port:04X} {'0' * 32}:0000 0A ".encode()
    found_table = False
    for table, row in (("/proc/net/tcp", v4), ("/proc/net/tcp6", v6)):
        try:
            with open(table, "rb") as f:
                data = f.read()
        except OSError:
            continue
        found_table = True
        if row in data:
            return True
    return False if found_table else None


def wait_listening(port: int, timeout: float, stop: threading.Event,
                   interval: float = 0.05) -> float | None:
    """``time.monotonic()`` when ``port`` first listens; None without /proc, on timeout,
    or once ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        state = listening(port)
        if state is None:
            return None
        if state:
            return time.monotonic()
        stop.wait(interval)
    return None


# ======================================================================================
# One session: one target, all scenarios
# ======================================================================================

class Session:
    def __init__(self, target: Target, bpki: BenchPKI, opts: Options, host: str,
                 echo: Callable[[str], None], tty: bool) -> None:
        self.target, self.bpki, self.opts, self.host = target, bpki, opts, host
        self.echo, self.tty = echo, tty
        self.tally = Tally()
        self.parent: PerfParent | None = None
        self.workers: list[tuple[Any, Any, Any]] = []
        self.node_procs: list[psutil.Process] = []
        self.gen_procs: list[psutil.Process] = []
        self.warnings: list[str] = []

    def say(self, text: str) -> None:
        self.echo(f"[{self.target.name}] {text}")

    # -------------------------------------------------------------- helpers
    def sent_total(self) -> int:
        return sum(c[C_SENT] for _, _, c in self.workers)

    def counter_sum(self, idx: int) -> int:
        return sum(c[idx] for _, _, c in self.workers)

    async def connected(self) -> int:
        try:
            n = await asyncio.to_thread(node_connected, self.target)
        except Exception:  # noqa: BLE001 - the node is busy or restarting
            n = None
        return n if n is not None else self.counter_sum(C_IDENTIFIED)

    async def ask_all(self, cmd: tuple[Any, ...], timeout: float) -> list[Any]:
        for _, pipe, _ in self.workers:
            pipe.send(cmd)
        return [await _recv(pipe, timeout) for _, pipe, _ in self.workers]

    def refresh_node_procs(self) -> None:
        root = self.target.root_pid()
        self.node_procs = _tree(root) if root else []

    async def connect_parent(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = client_context(self.bpki.ca_cert, self.bpki.cert(MASTER), self.bpki.key(MASTER))
        _, self.parent = await asyncio.wait_for(loop.create_connection(
            lambda: PerfParent(self.tally), self.host, self.target.port, ssl=ctx,
            server_hostname=SAT), 20)

    async def wait_connected(self, want: int, timeout: float, label: str
                             ) -> tuple[float | None, int]:
        """Wait until ``want`` agents are identified; (seconds or None on timeout, count).

        The clock stops when the last agent has the node's first frame (its Hello: the
        node accepted the certificate), read from the load processes' shared counters
        every 50 ms. The node itself is asked only then, to confirm its own count: polling
        it while it accepts would put the measuring tool's load on the node under test
        (Icinga's /v1/status lists every endpoint).
        """
        t0 = time.monotonic()
        bar = Progress(label, want, self.tty, self.say)
        n = 0
        shown = 0.0
        try:
            while time.monotonic() - t0 < timeout:
                if self.target.exited() is not None:
                    break                   # the caller and node_died() report it
                n = self.counter_sum(C_IDENTIFIED)
                now = time.monotonic()
                if n >= want:
                    took = now - t0
                    while time.monotonic() - t0 < timeout:
                        n = await self.connected()          # the node's own count
                        if n >= want:
                            rate = f", {n / took:.0f}/s" if took >= 0.25 else ""
                            bar.update(n, f"{n} connected{rate}")
                            return took, n
                        await asyncio.sleep(0.25)
                    break
                if now - shown >= 0.25:
                    shown = now
                    # no rate in the first quarter second: agents that came back while
                    # the node was starting (storm) would show as millions per second
                    rate = f", {n / (now - t0):.0f}/s" if now - t0 >= 0.25 else ""
                    bar.update(n, f"{n} connected{rate}")
                await asyncio.sleep(0.05)
        finally:
            bar.close()
        return None, n

    # -------------------------------------------------------------- load phases
    async def load_phase(self, name: str, rate: float | None, churn: float = 0.0
                         ) -> dict[str, Any]:
        opts = self.opts
        n = opts.endpoints
        t = self.tally
        rate_per_agent = (rate / n) if rate else 0.0
        t.parse_every = 1 if (rate and rate <= 20000) else 16
        t.latencies = []
        for _, pipe, _ in self.workers:
            pipe.send(("go", rate_per_agent, churn, (0.5, 2.0)))
        go = time.monotonic()
        deliv_go = t.check_results
        counters0 = await asyncio.to_thread(node_counters, self.target)
        await asyncio.sleep(opts.warmup)
        s0 = self.snapshot()
        bar = Progress(f"{name}", int(opts.duration), self.tty, self.say)
        last = s0
        rss_peak = 0
        per_second: list[float] = []
        seen_latencies = len(t.latencies)
        try:
            while time.monotonic() < s0["t"] + opts.duration:
                await asyncio.sleep(min(0.5, max(0.01, s0["t"] + opts.duration
                                                 - time.monotonic())))
                rss_peak = max(rss_peak, rss_bytes(self.node_procs))
                snap = self.snapshot()
                if snap["t"] - last["t"] >= 0.99:
                    rate_now = (snap["delivered"] - last["delivered"]) / (snap["t"] - last["t"])
                    per_second.append(rate_now)
                    # p99 of the results sampled since the last line (arrival order)
                    recent = sorted(x for _, x in t.latencies[seen_latencies:])
                    seen_latencies = len(t.latencies)
                    bar.update(int(snap["t"] - s0["t"]),
                               f"{rate_now:.0f} results/s delivered, p99 "
                               f"{_fmt(_pct(recent, 0.99))} ms, "
                               f"{self.counter_sum(C_IDENTIFIED)} agents up")
                    last = snap
        finally:
            bar.close()
        s1 = self.snapshot()
        counters1 = await asyncio.to_thread(node_counters, self.target)
        stopped = [r[1] for r in await self.ask_all(("stop",), 30)]
        sent = sum(s["sent"] for s in stopped)
        drain_s = await self.drain(deliv_go + sent)
        counters2 = await asyncio.to_thread(node_counters, self.target)
        window = s1["t"] - s0["t"]
        delivered = s1["delivered"] - s0["delivered"]
        node_cpu = s1["node_cpu"] - s0["node_cpu"]
        lat = sorted(x for tm, x in t.latencies if s0["t"] <= tm <= s1["t"])
        total_delivered = t.check_results - deliv_go
        res = {
            "scenario": name,
            "offered_per_s": rate,
            "window_s": window,
            "delivered_per_s": delivered / window,
            "accepted_per_s": (s1["sent"] - s0["sent"]) / window,
            "delivered_per_s_each_second": [round(x) for x in per_second],
            "node_cpu_cores": node_cpu / window,
            "node_cpu_s_per_10k": node_cpu / delivered * 10_000 if delivered else None,
            "node_rss_mb_peak": rss_peak / 2**20,
            "latency_samples": len(lat),
            "latency_ms_p50": _pct(lat, 0.50),
            "latency_ms_p99": _pct(lat, 0.99),
            "latency_ms_p999": _pct(lat, 0.999),
            "sent": sent,
            "delivered_total": total_delivered,
            "missing": max(0, sent - total_delivered - int(counters2.get("coalesced", 0) or 0)
                           + int(counters0.get("coalesced", 0) or 0)),
            "drain_s": drain_s,
            "generator_cpu_cores": [(b - a) / window for a, b in zip(s0["gen"], s1["gen"])],
            "parent_cpu_cores": (s1["main"] - s0["main"]) / window,
            "machine_busy": ((s1["busy"] - s0["busy"]) / max(1e-9, s1["total"] - s0["total"])),
            "agent_errors": [e for s in stopped for e in s["errors"]][:5],
            "closed_by_node": self.counter_sum(C_CLOSED_BY_PEER),
            "refused": _delta(counters0, counters2, "refused"),
            "coalesced": _delta(counters0, counters2, "coalesced"),
            "duration_s": time.monotonic() - go,
        }
        if churn:
            res["churn_fraction"] = churn
            res["churn_reconnects"] = sum(s["churn_drops"] for s in stopped)
            res["churn_reconnects_per_s"] = res["churn_reconnects"] / (time.monotonic() - go)
        for k, c in enumerate(res["generator_cpu_cores"]):
            if c > GEN_SATURATED:
                self.warn(f"{name}: load process {k} used {c:.0%} of a core: the generator is "
                          f"saturated, the node may be faster than measured")
        if res["parent_cpu_cores"] > GEN_SATURATED:
            self.warn(f"{name}: the parent (main process) used {res['parent_cpu_cores']:.0%} "
                      f"of a core: it may limit the delivered rate")
        if res["missing"]:
            self.warn(f"{name}: {res['missing']} of {sent} results did not reach the parent "
                      f"within {drain_s:.0f} s")
        if "error" in counters1:
            self.warn(f"{name}: status endpoint failed: {counters1['error']}")
        self.say(f"{name}: {res['delivered_per_s']:.0f} results/s delivered, p99 "
                 f"{_fmt(res['latency_ms_p99'])} ms, node CPU {res['node_cpu_cores']:.2f} cores")
        return res

    def snapshot(self) -> dict[str, Any]:
        busy, total = machine_busy()
        return {"t": time.monotonic(), "delivered": self.tally.check_results,
                "sent": self.sent_total(), "node_cpu": cpu_seconds(self.node_procs),
                "gen": [cpu_seconds([p]) for p in self.gen_procs],
                "main": cpu_seconds([psutil.Process()]), "busy": busy, "total": total}

    async def drain(self, want: int) -> float:
        """Wait until ``want`` results arrived, or opts.drain passed, or nothing arrived
        for 2 s while the node was idle (below 5 % of a core)."""
        t0 = time.monotonic()
        prev, since = self.tally.check_results, time.monotonic()
        cpu_prev, t_prev = cpu_seconds(self.node_procs), time.monotonic()
        while time.monotonic() - t0 < self.opts.drain and self.tally.check_results < want:
            await asyncio.sleep(0.25)
            cpu_now, t_now = cpu_seconds(self.node_procs), time.monotonic()
            busy = (cpu_now - cpu_prev) / max(1e-3, t_now - t_prev) > 0.05
            cpu_prev, t_prev = cpu_now, t_now
            if self.tally.check_results != prev or busy:
                prev, since = self.tally.check_results, time.monotonic()
            elif time.monotonic() - since >= 2.0:
                break
        return time.monotonic() - t0

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.say(f"WARNING: {text}")

    async def replay_phase(self) -> dict[str, Any]:
        """Load while the parent is away for ``replay_cut`` s; then time the backlog."""
        opts = self.opts
        rate = opts.rate or 5000.0
        t = self.tally
        t.keys = {}
        t.keys_since = time.time()
        t.parse_every = 1
        deliv0 = t.check_results
        ignored0 = t.ignored_older
        for _, pipe, _ in self.workers:
            pipe.send(("go", rate / opts.endpoints, 0.0, (0.5, 2.0)))
        await asyncio.sleep(min(opts.warmup, 2.0))
        assert self.parent is not None and self.parent.transport is not None
        self.parent.transport.close()
        cut_at = time.monotonic()
        self.say(f"replay: parent cut off for {opts.replay_cut:g} s under {rate:.0f} results/s")
        await asyncio.sleep(opts.replay_cut)
        stopped = [r[1] for r in await self.ask_all(("stop",), 30)]
        sent = sum(s["sent"] for s in stopped)
        per_agent_sent = collections.Counter()
        for s in stopped:
            per_agent_sent.update(s["per_agent_sent"])
        back = time.monotonic()
        await self.connect_parent()
        bar = Progress("replay backlog", sent, self.tty, self.say)
        timeout = max(60.0, opts.drain)
        drained_s = None
        last_unique, since = -1, time.monotonic()
        try:
            while time.monotonic() - back < timeout:
                unique = len(t.keys)
                bar.update(unique, f"{unique}/{sent} results received")
                if unique >= sent:
                    drained_s = time.monotonic() - back
                    break
                if unique != last_unique:
                    last_unique, since = unique, time.monotonic()
                elif time.monotonic() - since >= 5.0:
                    break                   # nothing new for 5 s: the rest is lost
                await asyncio.sleep(0.1)
        finally:
            bar.close()
        await asyncio.sleep(0.5)                 # late duplicates
        ignored = t.ignored_older - ignored0
        keys = t.keys
        t.keys = None
        unique = len(keys)
        dups = sum(v - 1 for v in keys.values())
        res = {
            "scenario": "replay", "offered_per_s": rate, "cut_s": back - cut_at,
            "sent": sent, "received_unique": unique, "duplicates": dups,
            "ignored_as_older": ignored,
            "missing": max(0, sent - unique),
            "exactly_once": unique == sent and dups == 0,
            "all_delivered": unique >= sent,
            "drain_s": drained_s,
            "backlog_per_s": (unique / drained_s) if drained_s else None,
            "last_arrival_after_return_s": (t.last_arrival - back)
            if t.last_arrival > back else None,
            "received_total": t.check_results - deliv0,
        }
        if drained_s is None:
            self.warn(f"replay: {sent - unique} of {sent} results still missing "
                      f"{time.monotonic() - back:.0f} s after the parent returned (nothing "
                      f"new for 5 s or {timeout:.0f} s passed)")
        self.say(f"replay: backlog of {sent} drained in {_fmt(drained_s)} s, missing "
                 f"{res['missing']}, duplicates {dups}")
        return res

    async def storm_phase(self) -> dict[str, Any]:
        """Restart the node; time until every agent is connected again."""
        n = self.opts.endpoints
        if isinstance(self.target, ExternalTarget):
            return {"scenario": "storm", "skipped": "cannot restart an existing node"}
        await self.ask_all(("reconnect", True), 10)
        t0 = time.monotonic()
        await asyncio.to_thread(self.target.stop)
        t_stopped = time.monotonic()
        # When the port opens, not when start() returns: Icinga's start() waits for its
        # REST API, which answers on the same port behind the storm of agent handshakes.
        give_up = threading.Event()
        opened = asyncio.ensure_future(asyncio.to_thread(
            wait_listening, self.target.port, self.connect_timeout(), give_up))
        try:
            await asyncio.to_thread(self.target.start)
        finally:
            if not opened.done():       # started (or failed): one more poll at most
                try:
                    await asyncio.wait_for(asyncio.shield(opened), 1.0)
                except TimeoutError:
                    pass
            give_up.set()
            t_listen = await opened
        t_up = time.monotonic()
        self.refresh_node_procs()
        cpu0 = cpu_seconds(self.node_procs)
        timeout = self.connect_timeout()
        # Watch the agents from now on, while the parent dials in: the parent's handshake
        # waits in the same queue as the agents' (seconds, for a busy Icinga), and a clock
        # started after it would leave that time out.
        waiting = asyncio.ensure_future(self.wait_connected(n, timeout, "storm reconnect"))
        try:
            await self.connect_parent()
        except BaseException:
            waiting.cancel()
            raise
        took, got = await waiting
        storm_cpu = cpu_seconds(self.node_procs) - cpu0
        await self.ask_all(("reconnect", False), 10)
        res = {"scenario": "storm", "stop_s": t_stopped - t0, "start_s": t_up - t_stopped,
               "all_back_s": took, "all_back_since_restart_s":
                   (t_up - t0 + took) if took is not None else None,
               "port_open_s": (t_listen - t_stopped) if t_listen is not None else None,
               "all_back_since_port_open_s": (t_up + took - t_listen)
                   if took is not None and t_listen is not None else None,
               "reconnected": got, "handshakes_per_s": (n / took) if took else None,
               "node_cpu_ms_per_handshake": storm_cpu / n * 1000,
               "node_rss_mb": rss_bytes(self.node_procs) / 2**20}
        if took is None:
            self.warn(f"storm: only {got} of {n} agents back after {timeout:.0f} s")
        self.say(f"storm: all {n} back {_fmt(res['all_back_since_restart_s'])} s after the "
                 f"restart began, {_fmt(res['all_back_since_port_open_s'])} s after its port "
                 f"opened")
        return res

    def node_died(self, when: str, out: dict[str, Any]) -> bool:
        """True (with a warning and ``out["node_died"]``) when the node under test has
        exited on its own: the numbers after that would measure nothing."""
        code = self.target.exited()
        if code is None:
            return False
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        self.warn(f"the node under test {how} ({when}); the remaining scenarios are "
                  f"skipped. {self.target.diagnostics()[-2000:]}".rstrip())
        out["node_died"] = {"when": when, "exit_code": code}
        return True

    def connect_timeout(self) -> float:
        return self.opts.connect_timeout or max(60.0, self.opts.endpoints / 20)

    # -------------------------------------------------------------- the session
    async def run(self) -> dict[str, Any]:
        opts, target = self.opts, self.target
        n = opts.endpoints
        out: dict[str, Any] = {"target": target.name}
        self.say("starting the node ..." if not isinstance(target, ExternalTarget)
                 else f"using {self.host}:{target.port}")
        t_start = time.monotonic()
        await asyncio.to_thread(target.start)
        out["node_start_s"] = time.monotonic() - t_start
        out["version"] = target.version()
        try:
            self.refresh_node_procs()
            rss_idle = rss_bytes(self.node_procs)
            await self.connect_parent()
            spawn = mp.get_context("spawn")
            nw = opts.workers or max(1, min(os.cpu_count() or 1, 8))
            shares = [list(range(n))[k::nw] for k in range(nw)]
            for share in shares:
                if not share:
                    continue
                here, there = spawn.Pipe()
                counter = spawn.RawArray(ctypes.c_longlong, N_COUNTERS)
                cfg = {"agents": share, "endpoints": n, "host": self.host, "port": target.port,
                       "ca": str(self.bpki.ca_cert), "certs": str(self.bpki.out_dir),
                       "shared_key": str(self.bpki.out_dir / "agents.key")
                       if (self.bpki.out_dir / "agents.key").exists() else "",
                       "payload_bytes": opts.payload_bytes, "batch": opts.batch,
                       "sndbuf": opts.sndbuf, "concurrency": 64}
                proc = spawn.Process(target=load_worker, args=(cfg, there, counter),
                                     daemon=True)
                proc.start()
                self.workers.append((proc, here, counter))
            for _, pipe, _ in self.workers:
                await _recv(pipe, 120)                 # ("ready", n): TLS contexts loaded
            self.gen_procs = [psutil.Process(p.pid) for p, _, _ in self.workers]
            # -------- connect all N
            gen0 = [cpu_seconds([p]) for p in self.gen_procs]
            node0 = cpu_seconds(self.node_procs)
            busy0 = machine_busy()
            t0 = time.monotonic()
            for _, pipe, _ in self.workers:
                pipe.send(("connect",))
            took, got = await self.wait_connected(n, self.connect_timeout(), "connecting")
            replies = [await _recv(pipe, self.connect_timeout()) for _, pipe, _ in self.workers]
            el = time.monotonic() - t0
            busy1 = machine_busy()
            failed = sum(r[3] for r in replies)
            rss_conn = rss_bytes(self.node_procs)
            out["connect"] = {
                "all_connected_s": took, "connected": got, "connect_failures": failed,
                "connect_errors": [e for r in replies for e in r[2]][:5],
                "handshakes_per_s": (n / took) if took else None,
                "node_cpu_s": cpu_seconds(self.node_procs) - node0,
                "node_cpu_ms_per_handshake": (cpu_seconds(self.node_procs) - node0) / n * 1000,
                "generator_cpu_cores": [(cpu_seconds([p]) - a) / el
                                        for p, a in zip(self.gen_procs, gen0)],
                # the client side of the handshakes, on the same CPUs as the node
                "agent_cpu_ms_per_handshake": sum(
                    cpu_seconds([p]) - a for p, a in zip(self.gen_procs, gen0)) / n * 1000,
                "machine_busy": (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]),
                "node_rss_mb_idle": rss_idle / 2**20,
                "node_rss_mb_connected": rss_conn / 2**20,
                "rss_kb_per_endpoint": (rss_conn - rss_idle) / n / 1024,
            }
            if took is None:
                self.warn(f"only {got} of {n} agents connected after "
                          f"{self.connect_timeout():.0f} s ({failed} failures)")
            elif out["connect"]["machine_busy"] > MACHINE_SATURATED:
                self.warn(f"connecting: the machine was {out['connect']['machine_busy']:.0%} "
                          f"busy; the emulated agents' handshakes share its CPUs with the "
                          f"node, so the time to connect is partly theirs. 'node CPU per "
                          f"handshake' is the node's own cost")
            else:
                self.say(f"{n} agents connected and identified in {took:.1f} s "
                         f"({n / took:.0f} handshakes/s), node RSS {rss_conn / 2**20:.0f} MB")
            # -------- scenarios
            for sc in opts.scenarios:
                if self.node_died("before " + sc, out):
                    break
                if sc == "steady":
                    out["steady"] = await self.load_phase("steady", opts.rate)
                elif sc == "max":
                    out["max"] = await self.load_phase("max", None)
                elif sc == "churn":
                    out["churn"] = await self.load_phase("churn", opts.rate or 5000.0,
                                                         churn=opts.churn_fraction)
                elif sc == "replay":
                    out["replay"] = await self.replay_phase()
                elif sc == "storm":
                    out["storm"] = await self.storm_phase()
            else:
                self.node_died("at the end", out)
            out["node_rss_mb_end"] = rss_bytes(self.node_procs) / 2**20
            out["other_methods_at_parent"] = dict(self.tally.methods)
            out["bad_messages_at_parent"] = self.tally.bad[:3]
        finally:
            await stop_workers(self.workers, ("close",), 15)
            if self.parent is not None and self.parent.transport is not None:
                self.parent.transport.close()
            self.say("stopping the node ...")
            await asyncio.to_thread(target.stop)
        out["warnings"] = self.warnings
        return out


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(p * len(values)))]


def _delta(a: dict[str, Any], b: dict[str, Any], key: str) -> int | None:
    if key in a and key in b:
        return int(b[key]) - int(a[key])
    return None


def _fmt(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


# ======================================================================================
# Report
# ======================================================================================

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
    ("refused by the node (steady)", ("steady", "refused"), "d", None),
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
    both = len(sessions) == 2
    head = f"{'measure':38}" + "".join(f"{n:>14}" for n in names) + (
        f"{'ratio':>10}" if both else "")
    lines += ["", head]
    for label, path, fmt, better in ROWS:
        vals = [_get(s, path) for s in sessions]
        if all(v is None for v in vals):
            continue
        row = f"{label:38}" + "".join(
            f"{(format(v, fmt) if v is not None else '-'):>14}" for v in vals)
        if both:
            a, b = vals
            ratio = (a / b) if (a is not None and b and better) else None
            row += f"{_fmt(ratio, '.2f'):>10}"
        lines.append(row)
    if both:
        lines.append(f"ratio = {names[0]}/{names[1]}; higher is better for rates, lower for "
                     f"times, latency, CPU and memory")
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


# ======================================================================================
# Entry point
# ======================================================================================

def run(opts: Options, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"meta": ..., "sessions": [per target]}``."""
    import uvloop

    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    tty = opts.progress if opts.progress is not None else sys.stderr.isatty()
    raise_nofile()
    if opts.endpoints < 1:
        raise ValueError("endpoints must be >= 1")
    from router.pki import KEY_TYPES
    if opts.key_type not in KEY_TYPES:
        raise ValueError(f"key type {opts.key_type!r}: expected one of {', '.join(KEY_TYPES)}")
    if opts.workers < 0:
        raise ValueError("workers must be >= 0 (0: one per core)")
    if opts.duration <= 0 or opts.warmup < 0 or opts.drain <= 0 or opts.replay_cut <= 0:
        raise ValueError("duration, drain and replay_cut must be > 0, warmup >= 0")
    for sc in opts.scenarios:
        if sc not in SCENARIOS:
            raise ValueError(f"unknown scenario {sc!r}")
    if opts.target:
        host, sep, port = opts.target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--target {opts.target!r}: expected HOST:PORT")
        if not opts.pki_dir:
            raise ValueError("--target needs --pki DIR (the CA: ca.crt and ca.key)")
    elif opts.pki_dir or opts.status_url:
        raise ValueError("--pki and --status-url describe an existing node: use them with "
                         "--target")
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="router-perf-"))
    sessions: list[dict[str, Any]] = []
    nw = opts.workers or max(1, min(os.cpu_count() or 1, 8))
    try:
        t0 = time.monotonic()
        if opts.target:
            bpki = _pki_from_ca(base, Path(opts.pki_dir), opts.endpoints,  # type: ignore[arg-type]
                                opts.key_type)
        else:
            bpki = make_pki(base, opts.endpoints, shared_key=True, key_type=opts.key_type)
        echo(f"certificates for {opts.endpoints} agents issued in {time.monotonic() - t0:.1f} s")
        kinds = ["target"] if opts.target else ["router"]
        if opts.against == "icinga2":
            kinds.append("icinga")
        for kind in kinds:
            host = "127.0.0.1"
            if kind == "target":
                host, _, port = opts.target.rpartition(":")  # type: ignore[union-attr]
                target: Target = ExternalTarget(host, int(port), opts.status_url)
            elif kind == "router":
                target = RouterTarget(base, bpki, opts.endpoints, opts.router_toml)
            else:
                target = IcingaTarget(base, bpki, opts.endpoints, "information")
                _scale_icinga_start(target, opts.endpoints)
            session = Session(target, bpki, opts, host, echo, tty)
            sessions.append(uvloop.run(session.run()))
    finally:
        if opts.keep:
            echo(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    import uvloop as _uv
    meta = {"benchmark": "router perf", **{k: v for k, v in asdict(opts).items()
                                            if k not in ("progress",)},
            "rate": opts.rate if opts.rate else "max",
            "workers": nw, "cpus": psutil.cpu_count(), "python": platform.python_version(),
            "uvloop": _uv.__version__, "orjson": orjson.__version__,
            "total_run_s": time.monotonic() - started}
    result = {"meta": meta, "sessions": sessions}
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(result, indent=2, default=str))
    return result


def _scale_icinga_start(target: IcingaTarget, n: int) -> None:
    """Icinga validates N hosts, services and zones before it listens: allow for that."""
    timeout = max(60.0, n / 25)
    orig = target.node.start
    target.start = lambda: orig(timeout=timeout)  # type: ignore[method-assign]


def _pki_from_ca(base: Path, ca_dir: Path, n: int, key_type: str = "ec") -> BenchPKI:
    """Certificates for ``master`` and the agents, issued by an existing CA (``--pki``).

    Like :func:`perf.common.make_pki`: one shared key, and each agent's certificate file
    holds its chain (certificate, then CA), the bytes an Icinga agent sends.
    """
    from router import pki
    ca_cert, ca_key = pki.load_ca(ca_dir)
    out = base / "issued"
    out.mkdir(parents=True)
    shutil.copy(ca_dir / "ca.crt", out / "ca.crt")
    _, shared = pki.issue_certificate(ca_cert, ca_key, MASTER, key_type=key_type)
    pki.write_private_key(out / "agents.key", shared)  # type: ignore[arg-type]
    for name in [MASTER] + [agent_name(i) for i in range(n)]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, key=shared)
        if name == MASTER:
            pki.write_certificate(out / f"{name}.crt", cert)
        else:
            write_agent_chain(out / f"{name}.crt", cert, ca_cert)
        pki.write_private_key(out / f"{name}.key", key)  # type: ignore[arg-type]
    return BenchPKI(ca_dir, out)
