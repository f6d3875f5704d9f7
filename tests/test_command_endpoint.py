"""Our node as a command_endpoint: a parent's event::ExecuteCommand runs on the executors."""

from __future__ import annotations

import os
import time

import pytest

from tests.nodeutil import ClusterSpec, FakePeer, metrics_text, wait_until
from tests.pkiutil import make_test_pki

CHECK_LOAD = "/usr/lib/nagios/plugins/check_load"


@pytest.fixture
def spec(tmp_path):
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])


def test_parent_checks_run_on_our_executors(spec, run):
    async def main():
        agent = await spec.start("agent1", node_extra="accept_commands = true")
        try:
            assert agent.pool is not None and agent.pool.workers >= 1
            parent = await FakePeer.connect(spec.port("agent1"), spec.pki, "master",
                                            server_name="agent1")
            parent.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "check_command", "host": "agent1",
                "service": "dummy-svc",
                "macros": {"dummy_state": 2, "dummy_text": "boom from the executor"}})
            parent.send("event::ExecuteCommand", {
                "command": "no-such-command", "command_type": "check_command",
                "host": "agent1", "service": "x", "macros": {}})
            parent.send("event::ExecuteCommand", {
                "command": "ping4", "command_type": "check_command", "host": "agent1",
                "service": "no-address", "macros": {}})
            expected = 3
            if os.access(CHECK_LOAD, os.X_OK):
                parent.send("event::ExecuteCommand", {
                    "command": "load", "command_type": "check_command", "host": "agent1",
                    "service": "load", "macros": {"load_wload1": 1000, "load_cload1": 2000}})
                expected += 1
            parent.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "check_command", "host": "agent1",
                "macros": {"dummy_state": 0, "dummy_text": "api run"},
                "source": "6f0e5d6a-0000-4000-8000-000000000001",
                "deadline": time.time() + 60, "endpoint": "agent1"})
            parent.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "check_command", "host": "agent1",
                "macros": {}, "source": "6f0e5d6a-0000-4000-8000-000000000002",
                "deadline": time.time() - 1, "endpoint": "agent1"})
            await wait_until(lambda: len(parent.messages("event::CheckResult")) == expected
                             and parent.messages("event::ExecutedCommand"), timeout=30,
                             what="answers from the executors")
            results = {m["params"]["service"]: m for m in parent.messages("event::CheckResult")}
            cr = results["dummy-svc"]["params"]["cr"]
            assert (cr["state"], cr["output"]) == (2, "boom from the executor")
            assert cr["check_source"] == "agent1" and cr["performance_data"] == []
            assert "ts" not in results["dummy-svc"]  # direct answer, like Icinga
            missing = results["no-address"]["params"]["cr"]
            assert missing["state"] == 3 and "Non-optional macro" in missing["output"]
            unknown = results["x"]["params"]["cr"]
            assert unknown["state"] == 3
            assert unknown["output"] == "Check command 'no-such-command' does not exist."
            if "load" in results:
                load = results["load"]["params"]["cr"]
                # The plugin really ran: its verdict follows the machine's load, which a
                # busy test machine pushes past check_load's thresholds.
                verdicts = {"LOAD OK": 0, "LOAD WARNING": 1, "LOAD CRITICAL": 2}
                word = next(w for w in verdicts if load["output"].startswith(w))
                assert load["state"] == verdicts[word], load
                assert any(p.startswith("load1=") for p in load["performance_data"])
            text = await metrics_text(agent)
            assert "router_checks_executed_total " in text
            assert "router_checks_expired_total 0" in text
            assert 'router_check_queue_wait_seconds_bucket{le="+Inf"}' in text
            assert "# TYPE router_check_queue_wait_seconds histogram" in text
            [executed] = parent.messages("event::ExecutedCommand")
            assert executed["params"]["execution"] == "6f0e5d6a-0000-4000-8000-000000000001"
            assert executed["params"]["exit"] == 0 and executed["params"]["output"] == "api run"
            await parent.close()
        finally:
            await agent.stop()

    run(main(), timeout=90)


def test_execute_command_from_a_child_is_refused(spec, run):
    """Commands only flow down: a child zone may not make us run anything."""
    async def main():
        master = await spec.start("master", node_extra="accept_commands = true")
        try:
            child = await FakePeer.connect(spec.port("master"), spec.pki, "agent1",
                                           server_name="master")
            child.send("event::ExecuteCommand", {
                "command": "dummy", "command_type": "check_command", "host": "agent1",
                "service": "x", "macros": {"dummy_text": "should not run"}})
            await wait_until(lambda: master.node.stats.get("agent1") is not None
                             and master.node.stats["agent1"].refused, what="refusal")
            text = await metrics_text(master)
            assert ('router_messages_refused_total{endpoint="agent1",'
                    'method="event::ExecuteCommand",reason="not_allowed"} 1') in text
            assert 'router_checks_executed_total 0' in text
            assert not child.messages("event::CheckResult") and not child.closed
            await child.close()
        finally:
            await master.stop()

    run(main(), timeout=60)
