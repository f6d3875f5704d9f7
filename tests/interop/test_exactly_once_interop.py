"""Issue 21 with a real Icinga 2.13 peer: at-least-once towards Icinga, its
``log::SetLogPosition`` honoured, through a ``kill -9`` of the Icinga master.

real master <- our satellite sat1 <- real agent. The master confirms what it received
(``log::SetLogPosition``, every 5 s); we must replay exactly what it has not confirmed
when it comes back, whatever killed it. Icinga writes its own position of our messages
(``remote_log_position``) to its state file only every few minutes, so its restarted
process accepts everything we replay: towards Icinga the contract stays Icinga's
at-least-once, and nothing may be lost.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from perf.icinga import IcingaFactory
from .test_replay_interop import cib
from .test_router_interop import (
    CONNECT_TIMEOUT,
    CR,
    PASSIVE_OBJECTS,
    RESULT_TIMEOUT,
    RouterMaker,
    diag,
    make_router,
    refusals,
    service_result,
    start_chain,
)

__all__ = ["make_router"]  # the fixture, re-exported so that pytest finds it here

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]


def test_icinga_master_killed_gets_everything_it_had_not_confirmed(
        icinga_factory: IcingaFactory, make_router: RouterMaker) -> None:
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)
    agent.process_check_result("agent1", "passive-svc", 0, "confirmed r0")
    router.wait_for(lambda: service_result(master, "agent1", "passive-svc", "confirmed r0"),
                    RESULT_TIMEOUT, what="r0 on the real master",
                    extra=lambda: master.diagnostics(40))
    # The master's confirmation (log::SetLogPosition) releases r0 from what we hold as
    # possibly lost in flight: we honour Icinga's confirmations.
    router.wait_for(lambda: router.metric("router_unconfirmed_bytes", endpoint="master") == 0,
                    15, what="the master confirming r0", extra=lambda: diag(router, master, agent))
    replayed_before = router.metric("router_replay_replayed_total", endpoint="master")

    # kill -9 of the master's whole process group (umbrella and worker): no shutdown, no
    # state file written.
    assert master.pid is not None
    os.killpg(master.pid, signal.SIGKILL)
    master.stop()
    router.wait_for(lambda: not router.endpoint_status("master")["connected"], 15,
                    what="our satellite noticing that the master is gone")

    n = 5
    outputs = [f"away r{i}" for i in range(1, n + 1)]
    for i, output in enumerate(outputs, 1):
        agent.process_check_result("agent1", "passive-svc", 2 if i % 2 else 0, output)
        time.sleep(0.05)
    router.wait_for(lambda: router.metric("router_messages_received_total", endpoint="agent1",
                                          method=CR) == 1 + n, 10,
                    what=f"{n} results from the agent at our satellite")

    master.start()
    router.wait_for(lambda: service_result(master, "agent1", "passive-svc", outputs[-1]),
                    CONNECT_TIMEOUT + RESULT_TIMEOUT, what="the last buffered result on the "
                    "restarted master", extra=lambda: master.diagnostics(60))
    master.wait_for(lambda: cib(master)["passive_service_checks_1min"] >= n, 10,
                    what="the master's passive result counter")
    time.sleep(1.5)  # nothing more trickles in
    replayed = router.metric("router_replay_replayed_total", endpoint="master") \
        - replayed_before
    processed = cib(master)["passive_service_checks_1min"]
    # Everything after the confirmed position arrived (at least once); r0, which the
    # master had confirmed before the kill, was not sent again.
    assert processed == n, (processed, diag(router, master, agent))
    assert replayed >= n, diag(router, master, agent)
    assert router.metric("router_messages_sent_total", endpoint="master", method=CR) == 1
    # The routerOrigin key we add is ignored by Icinga: nothing refused, nothing odd.
    text = master.log_path.read_text(errors="replace")
    assert "Unauthorized access" not in text and "Error while processing" not in text
    # (The master's config::Update on each connect is refused: accept_config is off.)
    assert not {k: v for k, v in refusals(router).items() if k[1] != "config::Update"}, \
        diag(router, master, agent)


def test_icinga_agent_honours_our_confirmations_across_a_satellite_restart(
        icinga_factory: IcingaFactory, make_router: RouterMaker) -> None:
    """A real agent honours our confirmations (given only once the master confirmed)
    and replays only after them; a restarted satellite drops what it had processed
    before (its positions on disk), so the master gets each result once."""
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)
    n = 4
    outputs = [f"live r{i}" for i in range(1, n + 1)]
    for i, output in enumerate(outputs, 1):
        agent.process_check_result("agent1", "passive-svc", 2 if i % 2 else 0, output)
        time.sleep(0.05)
    router.wait_for(lambda: service_result(master, "agent1", "passive-svc", outputs[-1]),
                    RESULT_TIMEOUT, what="the live results on the master",
                    extra=lambda: master.diagnostics(40))
    # Our satellite confirms to the agent only once the master confirmed to us (every
    # 5 s each way): the agent's position of sat1 moves past the results.
    sent_at = time.time() - 30
    agent.wait_for(lambda: (agent.endpoint("sat1") or {}).get("local_log_position", 0)
                   > sent_at, 20, what="our satellite confirming the results to the agent")

    port = router.pin_listen_port()
    router.stop()
    router.start()
    assert router.listen_port == port
    router.wait_for(lambda: router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="the agent back at our restarted satellite",
                    extra=lambda: agent.diagnostics(40))
    router.wait_for(lambda: router.endpoint_status("master")["connected"], CONNECT_TIMEOUT,
                    what="our restarted satellite back at the master")
    agent.process_check_result("agent1", "passive-svc", 0, "after restart")
    router.wait_for(lambda: service_result(master, "agent1", "passive-svc", "after restart"),
                    RESULT_TIMEOUT, what="a new result through the restarted satellite")
    time.sleep(1.5)
    # The restarted satellite (its counters start at zero) passed on the new result and
    # nothing else: the agent replayed nothing we had confirmed, or we dropped it.
    assert router.metric("router_messages_sent_total", endpoint="master", method=CR) == 1, \
        diag(router, master, agent)
    assert router.metric("router_replay_replayed_total", endpoint="master") == 0
    assert not {k: v for k, v in refusals(router).items() if k[1] != "config::Update"}, \
        diag(router, master, agent)
