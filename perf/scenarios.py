"""The scenarios of ``router perf`` on one session: connect, steady/max/churn, replay, storm.

:meth:`Session.run` is one target's whole session: start the node, connect the parent
and all N agents (the ``connect`` numbers), then the scenarios in turn on the same
connections, then stop everything.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import multiprocessing as mp
import os
import threading
import time
from typing import Any

import psutil

from perf.load import C_CLOSED_BY_PEER, C_IDENTIFIED, N_COUNTERS, load_worker
from perf.measure import GEN_SATURATED, cpu_seconds, machine_busy, rss_bytes, wait_listening
from perf.options import agent_sndbuf
from perf.report import Progress
from perf.report import fmt_or_dash as _fmt
from perf.scale import ProfileRun, agentstorm_phase, cpu_split, down_phase
from perf.session import SessionBase
from perf.targets import ExternalTarget, node_counters
from perf.wire import agent_name
from perf.workers import recv_from as _recv
from perf.workers import stop_workers

__all__ = ["MACHINE_SATURATED", "Session"]

#: Above this share of all CPUs busy, a wall time measures the machine, not only the node.
MACHINE_SATURATED = 0.90


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(p * len(values)))]


def _delta(a: dict[str, Any], b: dict[str, Any], key: str) -> int | None:
    if key in a and key in b:
        return int(b[key]) - int(a[key])
    return None


class _ByAgent(dict[Any, int]):
    """``Tally.keys`` stand-in during ``stormload``: the parent parses every result and
    stores its (host, time) key right after appending its latency; we keep (arrival,
    latency, whether the host is one of the storm's agents) instead of the key."""

    def __init__(self, tally: Any, storm: set[str], out: list[tuple[float, float, bool]]
                 ) -> None:
        super().__init__()
        self.tally, self.storm, self.out = tally, storm, out

    def __setitem__(self, key: Any, value: int) -> None:
        tm, lat = self.tally.latencies[-1]
        self.out.append((tm, lat, key[0] in self.storm))


class Session(SessionBase):
    """One target's session with the scenarios (:meth:`run` runs them all)."""

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
        profile = ProfileRun(self, name, opts.duration)           # --py-spy DIR
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
        profiles = await profile.finish()
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
            "node_cpu_us_per_result": node_cpu / delivered * 1e6 if delivered else None,
            "node_cpu_us_per_result_each": cpu_split(self, s0["node_cpu_each"],
                                                     s1["node_cpu_each"], delivered),
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
            "profiles": profiles,
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
        per_agent_sent: collections.Counter[str] = collections.Counter()
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

    async def stormload_phase(self) -> dict[str, Any]:
        """Half the agents send at the paced rate throughout; in the middle of the window
        the other half (which send too) drop their sessions all at once and dial straight
        back. The figure: the latency of the *established* half's results while the
        storm's handshakes run, beside the same half's quiet latency before it."""
        opts = self.opts
        n = opts.endpoints
        rate = opts.rate or 5000.0
        t = self.tally
        # the load processes' churners: every second agent of each share (load.py)
        storm = {agent_name(i) for share in self.shares for i in share[0::2]}
        n_storm = len(storm)
        samples: list[tuple[float, float, bool]] = []
        t.latencies = []
        t.keys_since = 0.0
        t.keys = _ByAgent(t, storm, samples)
        at = opts.warmup + opts.duration / 2          # the storm, from "go"
        for _, pipe, _ in self.workers:
            pipe.send(("go", rate / n, 0.5, (at, at)))
        go = time.monotonic()
        deliv_go = t.check_results
        await asyncio.sleep(opts.warmup)
        s0 = self.snapshot()
        t_drop: float | None = None
        t_back: float | None = None
        low = n
        bar = Progress("stormload", int(opts.duration), self.tty, self.say)
        # the window, and past it until the storm's agents are all back, but not past
        # twice ``at`` after "go": an agent back early drops again ``at`` after its return
        # (the load processes' churn repeats), which would be a second storm
        give_up = min(s0["t"] + opts.duration + self.connect_timeout(), go + 2 * at - 0.2)
        try:
            while (time.monotonic() < s0["t"] + opts.duration
                   or (t_drop is not None and t_back is None and time.monotonic() < give_up)):
                await asyncio.sleep(0.05)
                now = time.monotonic()
                up = self.counter_sum(C_IDENTIFIED)
                low = min(low, up)
                if t_drop is None and up <= n - n_storm // 2 and now >= go + at - 0.5:
                    t_drop = now
                elif t_drop is not None and t_back is None and up >= n:
                    t_back = now
                bar.update(min(int(opts.duration), int(now - s0["t"])), f"{up} agents up")
        finally:
            bar.close()
        s1 = self.snapshot()
        stopped = [r[1] for r in await self.ask_all(("stop",), 30)]
        t.keys = None
        sent = sum(s["sent"] for s in stopped)
        # the storm's span: until all are back, at least 1 s (enough samples)
        end = min(s1["t"], max(t_back or s1["t"], (t_drop or s1["t"]) + 1.0))
        start = t_drop if t_drop is not None else s1["t"]
        quiet = sorted(x for tm, x, st in samples if not st and s0["t"] <= tm < start)
        during = sorted(x for tm, x, st in samples if not st and start <= tm <= end)
        returning = sorted(x for tm, x, st in samples if st and start <= tm <= end)
        res = {
            "scenario": "stormload", "offered_per_s": rate, "window_s": s1["t"] - s0["t"],
            "storm_agents": n_storm, "established_agents": n - n_storm,
            "storm_at_s": (t_drop - s0["t"]) if t_drop is not None else None,
            "fewest_up": low,
            "all_back_s": (t_back - t_drop) if t_back and t_drop else None,
            "storm_span_s": end - start,
            "quiet_samples": len(quiet),
            "quiet_latency_ms_p50": _pct(quiet, 0.50),
            "quiet_latency_ms_p99": _pct(quiet, 0.99),
            "storm_samples": len(during),
            "established_latency_ms_p50": _pct(during, 0.50),
            "established_latency_ms_p99": _pct(during, 0.99),
            "returning_latency_ms_p99": _pct(returning, 0.99),
            "reconnects": sum(s["churn_drops"] for s in stopped),
            "sent": sent,
            "node_cpu_cores": (s1["node_cpu"] - s0["node_cpu"]) / max(1e-9, s1["t"] - s0["t"]),
            "machine_busy": ((s1["busy"] - s0["busy"]) / max(1e-9, s1["total"] - s0["total"])),
            "agent_errors": [e for s in stopped for e in s["errors"]][:5],
            "duration_s": time.monotonic() - go,
        }
        await self.drain(deliv_go + sent)             # nothing left in flight
        if t_drop is None:
            self.warn("stormload: the storm was not seen (agents up never fell to "
                      f"{n - n_storm // 2})")
        elif t_back is None:
            self.warn(f"stormload: not all {n_storm} storm agents were back "
                      f"{give_up - s0['t']:.0f} s into the window ({low} of {n} up at the "
                      f"lowest)")
        self.say(f"stormload: {n_storm} agents redialled at once; established p99 "
                 f"{_fmt(res['established_latency_ms_p99'])} ms during the storm, "
                 f"{_fmt(res['quiet_latency_ms_p99'])} ms before; all back in "
                 f"{_fmt(res['all_back_s'], '.2f')} s")
        return res

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
            self.shares = [s for s in shares if s]
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
                       "sndbuf": opts.sndbuf or agent_sndbuf(n), "concurrency": 64}
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
                if sc in ("replay", "stormload") and getattr(target, "count_only", False):
                    out[sc] = {"scenario": sc, "skipped": "the floor delivers nothing"}
                    continue
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
                elif sc == "stormload":
                    out["stormload"] = await self.stormload_phase()
                elif sc == "down":
                    out["down"] = await down_phase(self)
                elif sc == "agentstorm":
                    out["agentstorm"] = await agentstorm_phase(self)
                elif sc == "soak":
                    from perf.soak import soak_phase
                    out["soak"] = await soak_phase(self)
                elif sc == "floods":
                    from perf.bench_floods import floods_phase
                    out["floods"] = await floods_phase(self)
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
