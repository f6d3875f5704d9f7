"""One session of ``router perf``: one target, its parent, its load processes.

:class:`SessionBase` holds what a session has (the node under test, the emulated parent's
:class:`~perf.parent.Tally`, the load processes and their shared counters) and the tools
the scenarios measure with; the scenarios themselves are in :mod:`perf.scenarios`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil

from perf.benchpki import BenchPKI
from perf.load import C_IDENTIFIED, C_SENT
from perf.measure import cpu_seconds, machine_busy, process_tree
from perf.options import Options
from perf.parent import PerfParent, Tally
from perf.report import Progress
from perf.targets import Target, node_connected
from perf.wire import MASTER, SAT, client_context
from perf.workers import recv_from as _recv

__all__ = ["SessionBase"]


class SessionBase:
    """One target's session: the node, the parent, the load processes and their counters.

    What the scenarios measure with: counters, snapshots, waiting for connections and for
    a drained backlog, warnings. The scenarios are :class:`perf.scenarios.Session`'s.
    """

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
        #: the agent numbers of each load process, in the order of ``workers``
        self.shares: list[list[int]] = []

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
        self.node_procs = process_tree(root) if root else []
        for pid in getattr(self.target, "other_pids", list)():    # the chain's master
            self.node_procs += process_tree(pid)

    async def connect_parent(self) -> None:
        loop = asyncio.get_running_loop()
        # the chain: our parent is the master's zone peer, dialling the master
        name, sni, port = getattr(self.target, "parent_dial", (MASTER, SAT, self.target.port))
        ctx = client_context(self.bpki.ca_cert, self.bpki.cert(name), self.bpki.key(name))
        _, self.parent = await asyncio.wait_for(loop.create_connection(
            lambda: PerfParent(self.tally), self.host, port, ssl=ctx,
            server_hostname=sni), 20)

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

    def snapshot(self) -> dict[str, Any]:
        busy, total = machine_busy()
        return {"t": time.monotonic(), "delivered": self.tally.check_results,
                "sent": self.sent_total(), "node_cpu": cpu_seconds(self.node_procs),
                "node_cpu_each": [cpu_seconds([p]) for p in self.node_procs],
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
