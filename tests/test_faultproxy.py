"""Faults on the wire between two of our nodes (issue 21 part 6).

agent (scripted) -> our satellite -> fault proxy -> our master. The agent sends results
for distinct services while the proxy delays, stalls, dribbles byte by byte or resets the
satellite's connection to the master (mid-frame, after a partial write, repeatedly). Every
case must end with each result processed by the master exactly once: none lost (the
satellite keeps what the master has not confirmed and replays it on reconnect), none
processed twice (the master drops what it already processed). The same proxy between our
satellite and a real Icinga 2 master is in tests/interop/test_faultproxy_interop.py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from router.app import RouterService
from router.config import parse_config
from router.features.results import ResultStore
from tests.faultproxy import Fault, FaultProxy
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

N_RESULTS = 400
TIMEOUTS = ("handshake = 3.0\nreconnect_min = 0.1\nreconnect_max = 0.5\n"
            "heartbeat_interval = 0.5\nliveness = 2.0")

CASES: dict[str, list[Fault | None]] = {
    "delay-50ms": [Fault("both", delay=0.05)],
    "bytewise-32k": [Fault("both", bytewise=32_000)],
    "stall-1s": [Fault("up", stall_after=20_000, stall=1.0)],
    "stall-past-liveness": [Fault("up", stall_after=20_000, stall=4.0)],
    "reset-mid-frame": [Fault("up", reset_after=25_000)],
    "reset-after-partial-write": [Fault("up", reset_after=25_000, partial=True)],
    "reset-downstream": [Fault("down", reset_after=2_000)],
    "resets-repeated": [Fault("up", reset_after=15_000),
                        Fault("up", reset_after=30_000, partial=True),
                        Fault("both", reset_after=9_000, partial=True)],
}


class RecordingResults(ResultStore):
    """The master's result view, noting every result handed to it (before its own
    execution-time check): what a writer would get."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.Counter[tuple[str, str | None, str]] = collections.Counter()

    def update(self, host: str, service: str | None, cr: dict[str, Any],
               received_from: str, received_at: float, zone: str | None = None) -> bool:
        self.seen[(host, service, str(cr.get("output")))] += 1
        return super().update(host, service, cr, received_from, received_at, zone)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"), ["master", "sat1", "agent1"])


async def start_pair(tmp_path, pki, plan: list[Fault | None]
                     ) -> tuple[RouterService, RouterService, FaultProxy, RecordingResults]:
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("satellite", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "satellite")],
                       dialled={"master"}, timeouts=TIMEOUTS)
    master = await spec.start("master")
    recording = RecordingResults()
    master.node.results = recording
    proxy = await FaultProxy(spec.port("master"), plan).start()
    text = spec.toml("sat1").replace(f'addresses = ["127.0.0.1:{spec.port("master")}"]',
                                     f'addresses = ["127.0.0.1:{proxy.port}"]')
    assert f"127.0.0.1:{proxy.port}" in text
    (tmp_path / "sat1").mkdir(exist_ok=True)
    sat = RouterService(parse_config(text, str(tmp_path / "sat1.toml")))
    await sat.start()
    return master, sat, proxy, recording


async def send_results(spec_port: int, pki, n: int) -> FakePeer:
    agent = await FakePeer.connect(spec_port, pki, "agent1", server_name="sat1")
    await wait_until(lambda: agent.messages("icinga::Hello"), what="the satellite's hello")
    for i in range(n):
        agent.send("event::CheckResult",
                   check_result("agent1", f"svc{i}", f"result {i} " + "x" * 200))
        if i % 20 == 19:
            await agent.writer.drain()
            await asyncio.sleep(0.02)
    return agent


def assert_exactly_once(recording: RecordingResults, n: int, case: str) -> None:
    expected = {("agent1", f"svc{i}", f"result {i} " + "x" * 200) for i in range(n)}
    missing = expected - set(recording.seen)
    doubled = {k: v for k, v in recording.seen.items() if v > 1}
    assert not missing, f"{case}: {len(missing)} results lost, e.g. {sorted(missing)[:3]}"
    assert not doubled, (f"{case}: {len(doubled)} results processed more than once, e.g. "
                         f"{sorted(doubled.items())[:3]}")
    assert set(recording.seen) == expected


def run_uvloop(coro, timeout: float):
    """On the production loop only: the proxy's faults do not depend on the loop, and
    eight cases on both loops would cost a minute of the test run."""
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_cross_a_faulty_link_exactly_once(tmp_path, pki, case):
    async def main():
        master, sat, proxy, recording = await start_pair(tmp_path, pki, CASES[case])
        agent = None
        try:
            await wait_until(lambda: "sat1" in master.node.connections, timeout=15,
                             what="the satellite at the master")
            agent = await send_results(sat.listen_port, pki, N_RESULTS)

            def all_there() -> bool:
                return len(recording.seen) >= N_RESULTS
            await wait_until(all_there, timeout=40,
                             what=f"{N_RESULTS} results at the master ({case}; "
                                  f"{len(recording.seen)} so far, proxy {proxy.stats})")
            # late duplicates: a replay still on its way, a reconnect still to come
            await asyncio.sleep(1.5)
            assert_exactly_once(recording, N_RESULTS, case)
            plan = CASES[case]
            if any(f is not None and f.reset_after is not None for f in plan):
                assert proxy.stats.resets >= 1 and proxy.stats.connections >= 2
            if "liveness" in case:
                assert proxy.stats.connections >= 2     # the stall cut the session
        finally:
            if agent is not None:
                await agent.close()
            await sat.stop()
            await proxy.close()
            await master.stop()

    run_uvloop(main(), 90)
