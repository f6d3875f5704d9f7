"""The replay log between real Icinga 2.13.6 daemons and our router.

Our router runs in-process (``routerutil.RouterNode``), the Icinga daemons are
subprocesses started from the test's thread; everything on 127.0.0.1, one CA.

1. real master <- our satellite <- real agent: with the agent stopped, a problem on the
   agent's service is acknowledged through the master's REST API; the
   ``event::SetAcknowledgement`` waits in our satellite's log (zone agent1) and reaches
   the agent when it comes back (the agent's own REST API shows the acknowledgement).
2. same chain, the real master stopped while the agent keeps sending passive results:
   they wait in our satellite's log (zone master) and show up on the master after it
   returns, each exactly once (the master's CIB counts every processed result).
3. real agent -> our master: results the agent buffered in its *own* replay log while
   our node was down are accepted after our node restarts on the same port, each
   exactly once and none thrown away by the ``ts`` loop guard.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from perf.icinga import IcingaFactory, IcingaNode
from .routerutil import metric_value
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
    start_master_with_dialling_agent,
)

__all__ = ["make_router"]  # the fixture, re-exported so that pytest finds it here

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

# A passive service that goes HARD at the first problem (max_check_attempts = 1), so the
# master can acknowledge it as soon as the result has crossed the satellite.
ACK_OBJECTS = """
object Host "agent1" {
  zone = "agent1"
  check_command = "dummy"
  enable_active_checks = false
}

object Service "passive-svc" {
  zone = "agent1"
  host_name = "agent1"
  check_command = "dummy"
  enable_active_checks = false
  max_check_attempts = 1
}
"""

ACK = "event::SetAcknowledgement"


def cib(node: IcingaNode) -> dict:
    return node.api("/v1/status/CIB")["results"][0]["status"]


# --------------------------------------------------------------------------------------
# 1. an acknowledgement waits in our satellite's log for the agent
# --------------------------------------------------------------------------------------


def test_acknowledgement_for_stopped_agent_is_replayed(icinga_factory: IcingaFactory,
                                                       make_router: RouterMaker) -> None:
    master, router, agent = start_chain(icinga_factory, make_router, ACK_OBJECTS)

    # A problem, reported by the agent, known to the master (through our satellite).
    agent.process_check_result("agent1", "passive-svc", 2, "disk on fire")
    router.wait_for(lambda: (cr := service_result(master, "agent1", "passive-svc",
                                                  "disk on fire"))
                    and cr["state"] == 2, RESULT_TIMEOUT,
                    what="the agent's CRITICAL result on the real master",
                    extra=lambda: master.diagnostics(40) + "\n" + agent.diagnostics(30))
    assert agent.service("agent1", "passive-svc")["acknowledgement"] == 0

    agent.stop()
    router.wait_for(lambda: not router.endpoint_status("agent1")["connected"], 10,
                    what="the stopped agent gone from our satellite")
    # The log of zone agent1 may already hold records: what the master sent for zone
    # agent1 before the agent first connected (its start-up event::SetNextChecks) stays
    # until the agent confirms it and the next prune pass runs.
    text = router.metrics()
    records_before = metric_value(text, "router_replay_log_records", zone="agent1")
    persisted_before = metric_value(text, "router_replay_persisted_total")
    replayed_before = metric_value(text, "router_replay_replayed_total", endpoint="agent1")

    master.acknowledge("agent1", "passive-svc", "looking into it")
    assert master.service("agent1", "passive-svc")["acknowledgement"] != 0
    # The acknowledgement crossed to our satellite and went to zone agent1's log.
    router.wait_for(lambda: router.metric("router_messages_received_total",
                                          endpoint="master", method=ACK) == 1, 10,
                    what="the master's event::SetAcknowledgement at our satellite",
                    extra=lambda: master.diagnostics(40))
    router.wait_for(lambda: router.metric("router_replay_log_records", zone="agent1")
                    >= records_before + 1, 10,
                    what="the acknowledgement in our satellite's log for zone agent1")
    assert router.metric("router_replay_persisted_total") >= persisted_before + 1
    # The record itself, read by `router replaylog dump` (a separate reader process).
    dump = subprocess.run(
        [sys.executable, "-m", "router", "replaylog", "dump", "--zone", "agent1",
         "--data-dir", str(router.data_dir)], capture_output=True, text=True, timeout=30,
        check=False)
    assert dump.returncode == 0, dump.stderr
    acks = [json.loads(line) for line in dump.stdout.splitlines() if ACK in line]
    assert len(acks) == 1, dump.stdout
    assert acks[0]["message"]["params"]["service"] == "passive-svc", acks
    assert acks[0]["message"]["originZone"] == "master", acks

    # The agent comes back with its own directories (its state: still CRITICAL, not
    # acknowledged) and dials our satellite at start-up; the log is replayed to it.
    agent.start()
    router.wait_for(lambda: router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="the agent back at our satellite",
                    extra=lambda: agent.diagnostics(40))
    attrs = agent.wait_for(
        lambda: (a := agent.service("agent1", "passive-svc")) and a["acknowledgement"] != 0
        and a, RESULT_TIMEOUT, what="the acknowledgement on the agent (replayed)")
    assert attrs["state"] == 2, attrs
    assert attrs["acknowledgement"] == 1, attrs  # 1 = normal (not sticky)
    assert router.metric("router_replay_replayed_total", endpoint="agent1") \
        >= replayed_before + 1, diag(router, master, agent)
    # It came from our satellite's replay (the master's Comment object, sent as a
    # config::UpdateObject, is not logged), and the agent accepted it.
    # (Icinga's FileLogger flushes on its own schedule: wait for the line.)
    received = f"Received '{ACK}' message from identity 'sat1'"
    agent.wait_for(lambda: received in agent.log_path.read_text(errors="replace"), 10,
                   what="the replayed acknowledgement in the agent's log")
    agent_log = agent.log_path.read_text(errors="replace")
    assert agent_log.count(received) == 1, agent.log_tail(80)
    assert "Unauthorized access" not in agent_log


# --------------------------------------------------------------------------------------
# 2. the master away: the agent's results wait in our satellite's log
# --------------------------------------------------------------------------------------


def test_results_for_stopped_master_are_replayed_once(icinga_factory: IcingaFactory,
                                                      make_router: RouterMaker) -> None:
    master, router, agent = start_chain(icinga_factory, make_router, PASSIVE_OBJECTS)
    # One live result first: the chain works and the master has a stored result whose
    # execution_start the replayed ones must beat.
    agent.process_check_result("agent1", "passive-svc", 0, "live r0")
    router.wait_for(lambda: service_result(master, "agent1", "passive-svc", "live r0"),
                    RESULT_TIMEOUT, what="the live result on the real master",
                    extra=lambda: master.diagnostics(40))
    # Until the master confirms r0 (log::SetLogPosition, every 5 s), our satellite keeps
    # it as possibly lost in flight and would replay it after a drop; the restarted
    # master would then process it again (equal ts), as it would from an Icinga
    # satellite. Wait for the confirmation: it also checks that a real master's
    # confirmations release what we hold.
    router.wait_for(lambda: router.metric("router_unconfirmed_bytes", endpoint="master") == 0,
                    15, what="the master confirming r0",
                    extra=lambda: diag(router, master, agent))

    master.stop()
    router.wait_for(lambda: not router.endpoint_status("master")["connected"], 10,
                    what="our satellite noticing that the master is gone")
    records_before = router.metric("router_replay_log_records", zone="master")

    n = 6
    outputs = [f"away r{i}" for i in range(1, n + 1)]
    for i, output in enumerate(outputs, 1):
        # Alternating states, and every result a distinct execution_start.
        agent.process_check_result("agent1", "passive-svc", 2 if i % 2 else 0, output)
        time.sleep(0.05)
    router.wait_for(lambda: router.metric("router_messages_received_total", endpoint="agent1",
                                          method=CR) == 1 + n, 10,
                    what=f"{n} results from the agent at our satellite",
                    extra=lambda: agent.diagnostics(30))
    router.wait_for(lambda: router.metric("router_replay_log_records", zone="master")
                    >= records_before + n, 10,
                    what=f"the {n} results in our satellite's log for zone master")
    # Nothing went out to the (absent) master live.
    assert router.metric("router_messages_sent_total", endpoint="master", method=CR) == 1

    # The master comes back on its port, with its state; our satellite redials
    # (reconnect_max 2 s) and replays the log before any live traffic.
    master.start()
    last = router.wait_for(
        lambda: service_result(master, "agent1", "passive-svc", outputs[-1]),
        CONNECT_TIMEOUT + RESULT_TIMEOUT, what="the last buffered result on the master",
        extra=lambda: master.diagnostics(60))
    assert last["check_source"] == "agent1" and last["active"] is False, last
    assert last["state"] == (2 if n % 2 else 0), last
    # The restarted master processed exactly the n buffered results (its CIB counters
    # start from zero with the process; a duplicate would be counted too).
    master.wait_for(lambda: cib(master)["passive_service_checks_1min"] >= n, 10,
                    what="the master's passive result counter")
    time.sleep(1.5)  # nothing more trickles in
    assert cib(master)["passive_service_checks_1min"] == n, (cib(master),
                                                             diag(router, master, agent))
    replayed = router.metric("router_replay_replayed_total", endpoint="master")
    assert replayed >= n, diag(router, master, agent)
    assert router.metric("router_messages_sent_total", endpoint="master", method=CR) == 1
    # The master accepted everything we replayed.
    assert "Unauthorized access" not in master.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------------------
# 3. the agent's own replay log, replayed to our restarted master
# --------------------------------------------------------------------------------------


def test_agent_replay_log_accepted_after_router_restart(icinga_factory: IcingaFactory,
                                                        make_router: RouterMaker) -> None:
    router, agent = start_master_with_dialling_agent(icinga_factory, make_router,
                                                     objects=PASSIVE_OBJECTS)
    router.wait_for(lambda: router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="agent1 connected to our master", extra=lambda: agent.diagnostics())
    # One live result, confirmed back to the agent (log::SetLogPosition every 5 s), so
    # that the agent's replay after our restart holds only what we missed.
    confirmed_from = time.time()
    agent.process_check_result("agent1", "passive-svc", 0, "live r0")
    router.wait_for(lambda: [r for r in router.checkresults("agent1", "passive-svc")
                             if r["output"] == "live r0"], RESULT_TIMEOUT,
                    what="the live result in our result view")
    agent.wait_for(lambda: agent.endpoint("master")["local_log_position"] >= confirmed_from,
                   15, what="our confirmation of the live result")

    port = router.pin_listen_port()
    router.stop()
    agent.wait_for(lambda: agent.connected_endpoints() == [], 10,
                   what="the agent noticing that our master is gone")

    n = 6
    outputs = [f"buffered r{i}" for i in range(1, n + 1)]
    for i, output in enumerate(outputs, 1):
        agent.process_check_result("agent1", "passive-svc", 2 if i % 2 else 0, output)
        time.sleep(0.05)
    # The agent processed them and relayed them towards zone master, which nobody of is
    # connected: Icinga writes them to its replay log (DataDir/api/log/current; written
    # through a buffered stream, so its size on disk says nothing yet).
    agent.wait_for(lambda: service_result(agent, "agent1", "passive-svc", outputs[-1]), 10,
                   what="the last result processed on the agent")
    agent.wait_for(lambda: agent.log_path.read_text(errors="replace")
                   .count("Relaying 'event::CheckResult' message") == 1 + n, 10,
                   what=f"1 + {n} results relayed by the agent")

    router.start()
    assert router.listen_port == port
    # The agent redials on its 10 s reconnect timer, then replays its log to us.
    router.wait_for(lambda: router.endpoint_status("agent1")["connected"], CONNECT_TIMEOUT,
                    what="the agent back at our restarted master",
                    extra=lambda: agent.diagnostics(40))
    stored = router.wait_for(
        lambda: (r := router.checkresults("agent1", "passive-svc"))
        and r[0]["output"] == outputs[-1] and r[0], RESULT_TIMEOUT,
        what="the agent's last buffered result in our result view",
        extra=lambda: agent.diagnostics(40))
    assert stored["check_source"] == "agent1" and stored["received_from"] == "agent1", stored
    assert stored["active"] is False and stored["exit_status"] == (2 if n % 2 else 0), stored

    def received() -> float:
        return router.metric("router_messages_received_total", endpoint="agent1", method=CR)

    router.wait_for(lambda: received() >= n, 10, what=f"{n} results received")
    time.sleep(1.5)  # the replay is over: nothing more trickles in
    # Exactly the n buffered results (counters start with the restarted node): the live
    # r0 we had confirmed was not replayed, and nothing twice.
    assert received() == n, diag(router, agent)
    status = router.status()
    # None of them was thrown away by the ts loop guard (received counts before it).
    assert status["totals"]["stale_dropped"] == 0, status["totals"]
    assert status["totals"]["check_results"] == n, status["totals"]
    assert not refusals(router), diag(router, agent)
    # The agent really replayed them from its log (CheckResult + SetNextCheck each),
    # instead of, say, holding them in a send queue.
    replays = [int(m) for m in re.findall(r"Replayed (\d+) messages",
                                          agent.log_path.read_text(errors="replace"))]
    assert max(replays, default=0) >= n, replays

