"""Prometheus counters must not go backwards while the process runs (a decrease is read
as a restart, and increase()/rate() over it are wrong)."""
from __future__ import annotations

import re

from tests.conftest import run  # noqa: F401  (fixture: both event loops)
from tests.nodeutil import ClusterSpec, FakePeer, check_result, metrics_text, wait_until
from tests.pkiutil import make_test_pki

CR = "event::CheckResult"
LEARN = '[objects]\nunknown = "learn"\nmax_learned_per_zone = 2\n'


def learn_refused(text: str) -> float:
    m = re.search(r'^router_objects_learn_refused_total\{zone="agent1"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_learn_refused_counter_survives_a_reload(tmp_path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")])

    async def main():
        master = await spec.start("master", extra=LEARN)
        try:
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
            for i in range(5):
                agent.send(CR, check_result(f"h{i}", None, "x"))
            await wait_until(lambda: master.node.objects.learn_refused.get("agent1") == 3,
                             what="three hosts refused beyond the cap")
            before = learn_refused(await metrics_text(master))
            assert before == 3
            record = await master.reload("test")          # same file: nothing changes
            assert record.result == "ok", record
            after = learn_refused(await metrics_text(master))
            assert after >= before, (
                f"router_objects_learn_refused_total{{zone=\"agent1\"}} went from {before} "
                f"to {after} across a reload that changed nothing: a counter went backwards")
            await agent.close()
        finally:
            await master.stop()

    run(main())


FAST = "reconnect_min = 0.2\nreconnect_max = 0.5"


def congested(text: str, endpoint: str) -> int:
    m = re.search(rf'^router_send_queue_congested_total\{{endpoint="{endpoint}"\}} (\S+)$',
                  text, re.M)
    return int(float(m.group(1))) if m else 0


def test_send_queue_congested_counter_survives_a_disconnect(tmp_path, run) -> None:
    """router_send_queue_congested_total{endpoint} is read from the live connection's
    SendQueue (report.py: queue.high_water_events, 0 without a connection), so it falls
    back to 0 each time the endpoint disconnects, though the series stays (its stats
    outlive the connection)."""
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       timeouts=FAST,
                       limits="send_queue_high_messages = 200\nsend_queue_low_messages = 50")

    async def main():
        sat = await spec.start("sat1")
        try:
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
            backlog = 3000          # logged while the parent is away, > the high water
            for i in range(backlog):
                agent.send(CR, check_result("agent1", f"s{i % 7}", f"r{i}"))
            await wait_until(lambda: sat.node.replay.persisted >= backlog, timeout=30,
                             what="results in the replay log")
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            await wait_until(lambda: len(master.messages(CR)) >= backlog, timeout=30,
                             what="the replay at the parent")
            before = congested(await metrics_text(sat), "master")
            assert before > 0, "the replay did not congest the parent's queue"
            await master.close()
            await wait_until(lambda: "master" not in sat.node.connected_names,
                             what="parent gone")
            text = await metrics_text(sat)
            assert re.search(r'^router_send_queue_congested_total\{endpoint="master"\}',
                             text, re.M), "the series is still exported"
            after = congested(text, "master")
            assert after >= before, (
                f"router_send_queue_congested_total{{endpoint=\"master\"}} went from "
                f"{before} to {after} when the parent disconnected: a counter went backwards")
            await agent.close()
        finally:
            await sat.stop()

    run(main(), timeout=90)
