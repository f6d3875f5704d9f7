"""Exactly-once to the master's features through ``kill -9`` in a chain of real processes.

agents (``ReplayingAgent``: Icinga's at-least-once replay) -> satellite sat1 -> master,
every node a real ``router serve`` process with its own data directory. Each result has
its own service, so the master's result view holds one entry per distinct result (no
result lost) and ``router_check_results_total`` counts every delivery (no result
doubled); both must equal the number of results the agents produced.

The satellite killed: the agents replay what it had not confirmed (up to its confirmation
interval, here all of it), the restarted satellite drops what it had processed
(``router_replay_duplicates_dropped_total``) and the master drops what arrives again under
a new stamp. The master killed: the satellite replays what the master had not confirmed,
the restarted master drops what it had processed before the kill.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chainutil import ChainProcesses, ReplayingAgent
from tests.interop.routerutil import metric_value
from tests.nodeutil import ClusterSpec, http_get, wait_until
from tests.pkiutil import make_test_pki

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

AGENTS = 5
PER_AGENT = 1000     # 5 000 results in all
FAST = "reconnect_min = 0.1\nreconnect_max = 0.3\nconnect = 3.0"


def _metrics(process) -> str:
    code, body = http_get(process.status_port, "/metrics")
    assert code == 200, body
    return body.decode()


def _metric(process, name: str, **labels: str) -> float:
    try:
        return metric_value(_metrics(process), name, **labels)
    except (OSError, KeyError, ValueError, AssertionError):
        return -1.0


def _chain(tmp_path: Path) -> tuple[ClusterSpec, ChainProcesses, object]:
    agents = [f"agent{i}" for i in range(AGENTS)]
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", *agents])
    zones = [("master", ["master"], None), ("sat", ["sat1"], "master")]
    zones += [(a, [a], "sat") for a in agents]
    spec = ClusterSpec(tmp_path, pki, zones, dialled={"master"}, timeouts=FAST)
    return spec, ChainProcesses(spec, ["master", "sat1"]), pki


async def _produce(agents: list[ReplayingAgent], start: int, count: int) -> None:
    """``count`` results per agent, in bursts, outputs ``r<start>`` ... per agent."""
    for i in range(start, start + count, 100):
        for agent in agents:
            for k in range(i, min(i + 100, start + count)):
                agent.send_result(f"svc{k}", f"r{k}")
        await asyncio.gather(*(a.drain() for a in agents))
        await asyncio.sleep(0.01)


def _kill_and_restart(chain: ChainProcesses, spec: ClusterSpec, pki, victim: str,
                      expect_total: int) -> dict[str, float]:
    master = chain["master"]
    names = [f"agent{i}" for i in range(AGENTS)]

    async def scenario() -> dict[str, float]:
        agents = [ReplayingAgent(n, spec.port("sat1"), pki, "sat1") for n in names]
        for agent in agents:
            await agent.connect()
        half = PER_AGENT // 2
        await _produce(agents, 0, half)
        await wait_until(lambda: _metric(master, "router_check_results_total") >= AGENTS * half,
                         timeout=40, interval=0.1, what="first half at the master")
        first_life = _metric(master, "router_check_results_total")
        if victim == "master":
            # The master's processed positions are written every PERSIST_INTERVAL: what
            # it processed in the last fraction of a second before a kill -9 reaches
            # its restarted process again (docs/reliability.md). Past that, nothing may.
            await asyncio.sleep(1.0)
        # The kill lands right after delivery, before the next confirmation round.
        chain[victim].kill()
        for agent in agents:
            await agent.close()
        unconfirmed = sum(a.unconfirmed() for a in agents)
        await asyncio.to_thread(chain[victim].start)
        for agent in agents:
            await agent.connect()    # the agents replay what sat1 had not confirmed
        await _produce(agents, half, PER_AGENT - half)
        await wait_until(lambda: _metric(master, "router_check_results_stored")
                         >= expect_total - (first_life if victim == "master" else 0), timeout=60, interval=0.2,
                         what="every result in the master's result view")
        # Anything doubled would arrive within the satellite's replay: let it settle.
        await asyncio.sleep(2.0)
        settled = _metric(master, "router_check_results_total")
        await asyncio.sleep(1.0)
        for agent in agents:
            await agent.close()
        replayed = sum(a.replayed for a in agents)
        return {"unconfirmed_at_kill": unconfirmed, "agent_replays": replayed,
                "settled": settled, "first_life": first_life}

    return asyncio.run(asyncio.wait_for(scenario(), 130))


def _duplicates(process) -> float:
    text = _metrics(process)
    return sum(value for line in text.splitlines()
               if line.startswith("router_replay_duplicates_dropped_total{")
               for value in [float(line.rsplit(" ", 1)[1])])


@pytest.mark.parametrize("victim", ["sat1", "master"])
def test_kill_9_in_a_chain_delivers_every_result_exactly_once(tmp_path: Path,
                                                              victim: str) -> None:
    spec, chain, pki = _chain(tmp_path)
    total = AGENTS * PER_AGENT
    chain.start_all()
    try:
        started = time.monotonic()
        info = _kill_and_restart(chain, spec, pki, victim, total)
        master = chain["master"]
        stored = _metric(master, "router_check_results_stored")
        delivered = _metric(master, "router_check_results_total")
        print(f"kill -9 of {victim}: {info}; master stored {stored}, delivered "
              f"{delivered} in {time.monotonic() - started:.1f} s; duplicates dropped: "
              f"sat1 {_duplicates(chain['sat1'])}, master {_duplicates(master)}")
        assert info["first_life"] == AGENTS * (PER_AGENT // 2)
        if victim == "sat1":
            # The master lived through it: every result once in its view and its counter.
            assert stored == total, chain.tails()                # nothing lost
            assert delivered == total, (delivered, total)        # nothing doubled
            assert info["agent_replays"] > 0                     # the crash was felt
            assert _duplicates(chain["sat1"]) + _duplicates(master) > 0
        else:
            # The restarted master gets exactly what its first process had not processed.
            second = total - info["first_life"]
            assert stored == second, chain.tails()
            assert delivered == second, (delivered, second)
    finally:
        codes = chain.stop_all()
    assert all(code == 0 for code in codes.values()), (codes, chain.tails())


def test_kill_9_of_one_ha_master_loses_and_doubles_nothing_at_its_partner(
        tmp_path: Path) -> None:
    """HA masters: sat1 sends to one of them, which relays to its partner. The one that
    gets the results is killed right after delivery; the satellite fails over to the
    partner and replays what was not confirmed; the partner holds every result once."""
    agents = [f"agent{i}" for i in range(AGENTS)]
    pki = make_test_pki(tmp_path / "pki", ["master1", "master2", "sat1", *agents])
    zones = [("master", ["master1", "master2"], None), ("sat", ["sat1"], "master")]
    zones += [(a, [a], "sat") for a in agents]
    spec = ClusterSpec(tmp_path, pki, zones, dialled={"master1", "master2"}, timeouts=FAST)
    chain = ChainProcesses(spec, ["master1", "master2", "sat1"])
    total = AGENTS * PER_AGENT
    half = PER_AGENT // 2
    chain.start_all()
    try:
        async def scenario() -> str:
            masters = [chain["master1"], chain["master2"]]
            await wait_until(lambda: all(_metric(m, "router_peer_connected", endpoint="sat1")
                                         == 1 for m in masters), timeout=20, interval=0.1,
                             what="sat1 connected to both masters")
            feeders = [ReplayingAgent(n, spec.port("sat1"), pki, "sat1") for n in agents]
            for agent in feeders:
                await agent.connect()
            await _produce(feeders, 0, half)
            await wait_until(lambda: all(_metric(m, "router_check_results_total")
                                         >= AGENTS * half for m in masters), timeout=40,
                             interval=0.1, what="the first half at both masters")
            # The master the satellite sends to (the other one got them relayed).
            direct = [m for m in masters
                      if _metric(m, "router_messages_received_total", endpoint="sat1",
                                 method="event::CheckResult") > 0]
            assert len(direct) == 1, [p.config for p in direct]
            victim = direct[0]
            partner = masters[1 - masters.index(victim)]
            victim.kill()
            await _produce(feeders, half, PER_AGENT - half)
            await wait_until(lambda: _metric(partner, "router_check_results_stored")
                             >= total, timeout=60, interval=0.2,
                             what="every result at the surviving master")
            await asyncio.to_thread(victim.start)
            await asyncio.sleep(3.0)     # the victim's replay to its partner, if any
            for agent in feeders:
                await agent.close()
            return "master1" if victim is chain["master1"] else "master2"

        killed = asyncio.run(asyncio.wait_for(scenario(), 130))
        partner = chain["master2" if killed == "master1" else "master1"]
        stored = _metric(partner, "router_check_results_stored")
        delivered = _metric(partner, "router_check_results_total")
        print(f"kill -9 of {killed}: partner stored {stored}, delivered {delivered}; "
              f"duplicates dropped there: {_duplicates(partner)}")
        assert stored == total, chain.tails()
        assert delivered == total, (delivered, total)
    finally:
        codes = chain.stop_all()
    assert all(code == 0 for code in codes.values()), (codes, chain.tails())
