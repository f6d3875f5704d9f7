"""The replay log end to end: a parent that is away misses nothing, in order, exactly once."""

from __future__ import annotations

import asyncio
import re
import ssl

import pytest

from tests.nodeutil import (ClusterSpec, FakePeer, check_result, metrics_text, status_json,
                            wait_until)
from tests.pkiutil import make_test_pki

FAST = "reconnect_min = 0.1\nreconnect_max = 0.3\nconnect = 3.0"


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])


def outputs(peer: FakePeer) -> list[str]:
    return [m["params"]["cr"]["output"] for m in peer.messages("event::CheckResult")]


async def scripted_parent(spec: ClusterSpec, pki) -> tuple[asyncio.Server, FakePeer]:
    """A scripted master listening where sat1 dials: (its server, the session of sat1)."""
    server_ready = asyncio.Event()
    received: list[FakePeer] = []

    async def accept(reader, writer):
        peer = FakePeer(reader, writer)
        peer.send("icinga::Hello", {"capabilities": 1, "version": 21306})
        received.append(peer)
        server_ready.set()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.cert("master")), str(pki.key("master")))
    ctx.load_verify_locations(str(pki.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = await asyncio.start_server(accept, "127.0.0.1", spec.port("master"), ssl=ctx)
    await asyncio.wait_for(server_ready.wait(), 15)
    return server, received[0]


def test_results_for_an_absent_parent_are_replayed_in_order(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       dialled={"master"}, timeouts=FAST,
                       limits="send_queue_high_messages = 200\nsend_queue_low_messages = 50")

    async def main():
        sat = await spec.start("sat1")
        try:
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="sat's hello")
            # Nothing is logged for the agent's zone: live at once, no replay task.
            assert "agent1" in sat.node.connected_names
            assert "agent1" not in sat.node.replay.replayed
            backlog = 3000  # > the queue's high water: replay must pace itself
            for i in range(backlog):
                agent.send("event::CheckResult", check_result("agent1", f"s{i % 7}", f"r{i}"))
            await wait_until(lambda: sat.node.replay.persisted >= backlog,
                             what="results written to the replay log")
            # The parent comes (back): a scripted master listening where sat1 dials.
            server, master = await scripted_parent(spec, pki)
            # Live traffic while the replay runs must queue behind it.
            for i in range(backlog, backlog + 50):
                agent.send("event::CheckResult", check_result("agent1", "live", f"r{i}"))
            await wait_until(lambda: len(outputs(master)) >= backlog + 50, timeout=30,
                             what="backlog and live results at the parent")
            await asyncio.sleep(0.3)
            got = outputs(master)
            assert got == [f"r{i}" for i in range(backlog + 50)]  # in order, exactly once
            stamps = [m["ts"] for m in master.messages("event::CheckResult")]
            assert stamps == sorted(stamps)  # Icinga would drop anything older
            status = await status_json(sat)
            ep = {e["name"]: e for e in status["endpoints"]}
            assert ep["master"]["connected"]
            text = await metrics_text(sat)
            replayed = int(re.search(r'router_replay_replayed_total\{endpoint="master"\} (\d+)',
                                     text).group(1))
            # The live results sent during the replay may have queued behind it in the log.
            assert backlog <= replayed <= backlog + 50
            assert f"router_replay_persisted_total {replayed}" in text
            # The replay pushed the parent's queue past high water; now that it is empty
            # the counter must still say so (an empty SendQueue is falsy: not a reset).
            congested = int(re.search(
                r'router_send_queue_congested_total\{endpoint="master"\} (\d+)', text).group(1))
            assert congested > 0
            # The parent confirms what it got; the log is pruned on the next pass.
            master.send("log::SetLogPosition", {"log_position": stamps[-1]})
            sat.node.replay._next_prune = 0.0
            await wait_until(lambda: sat.node.replay.store.total_records == 0,
                             what="confirmed records pruned")
            server.close()
            await agent.close()
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=90)


def test_log_survives_a_restart_of_the_node(tmp_path, pki, run):
    """Records committed before a (clean) restart are replayed by the next process."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       dialled={"master"}, timeouts=FAST)

    async def main():
        sat = await spec.start("sat1")
        agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1", server_name="sat1")
        for i in range(20):
            agent.send("event::CheckResult", check_result("agent1", "disk", f"before {i}"))
        await wait_until(lambda: sat.node.replay.persisted >= 20, what="persisted")
        await agent.close()
        await sat.stop()
        sat = await spec.start("sat1")
        try:
            assert sat.node.replay.store.total_records == 20
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            await wait_until(lambda: len(outputs(master)) == 20, what="replay after restart")
            assert outputs(master) == [f"before {i}" for i in range(20)]
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=60)


CHAIN = [("master", ["master"], None), ("sat", ["sat1"], "master"),
         ("agent1", ["agent1"], "sat")]


async def master_and_agent_with_results(spec: ClusterSpec, pki, sat, count: int
                                        ) -> tuple[FakePeer, FakePeer]:
    """A scripted master and agent at ``sat``; the agent's ``count`` results r0.. have
    reached the master."""
    master = await FakePeer.connect(spec.port("sat1"), pki, "master", server_name="sat1")
    agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1", server_name="sat1")
    await wait_until(lambda: "agent1" in sat.node.connected_names
                     and "master" in sat.node.connected_names, what="sessions")
    for i in range(count):
        agent.send("event::CheckResult", check_result("agent1", "disk", f"r{i}"))
    await wait_until(lambda: len(outputs(master)) == count, what=f"{count} results")
    return master, agent


def test_written_but_unconfirmed_results_are_replayed_after_a_drop(tmp_path, pki, run):
    """A frame handed to TCP can still be lost when the parent goes away. What the
    parent has not confirmed (log::SetLogPosition) goes to the replay log at the drop,
    so the parent's next session gets everything after its confirmed position."""
    spec = ClusterSpec(tmp_path, pki, CHAIN, timeouts=FAST)

    async def main():
        sat = await spec.start("sat1")
        try:
            first, agent = await master_and_agent_with_results(spec, pki, sat, 10)
            stamps = [m["ts"] for m in first.messages("event::CheckResult")]
            ledger = sat.node.connections["master"].ledger
            assert ledger is not None and len(ledger) == 10
            text = await metrics_text(sat)
            assert re.search(r'router_unconfirmed_bytes\{endpoint="master"\} [1-9]', text)
            # The parent confirms r0..r4 and goes away; pretend r5..r9 were lost in flight.
            first.send("log::SetLogPosition", {"log_position": stamps[4]})
            await wait_until(lambda: len(ledger) == 5, what="confirmation applied")
            first.writer.transport.abort()
            await wait_until(lambda: "master" not in sat.node.connections, what="drop seen")
            second = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            await wait_until(lambda: len(outputs(second)) == 5, what="the unconfirmed five")
            agent.send("event::CheckResult", check_result("agent1", "disk", "r10"))
            await wait_until(lambda: len(outputs(second)) == 6, what="live after the replay")
            assert outputs(second) == [f"r{i}" for i in range(5, 11)]
            got = [m["ts"] for m in second.messages("event::CheckResult")]
            assert got[:5] == stamps[5:] and got == sorted(got)
            for peer in (agent, second):
                await peer.close()
        finally:
            await sat.stop()

    run(main(), timeout=60)


def test_icinga_replay_markers_confirm_nothing(tmp_path, pki, run):
    """While Icinga replays its own log after a connect it sends ``log::SetLogPosition``
    with the name of the log file it replays: a whole second, for the live file one
    second in the future. Taken as a receipt it confirmed every frame we had written, and
    frames cut off by a reset at that moment were never replayed (issue 21: results
    lost towards a real master). Neither the marker nor a position newer than any stamp
    of ours may confirm anything."""
    import time

    spec = ClusterSpec(tmp_path, pki, CHAIN, timeouts=FAST)

    async def main():
        sat = await spec.start("sat1")
        try:
            first, agent = await master_and_agent_with_results(spec, pki, sat, 6)
            ledger = sat.node.connections["master"].ledger
            assert ledger is not None and len(ledger) == 6
            # Icinga's marker for its live log file, then one from the future with a
            # fraction, then a real receipt of r1: only the last one confirms.
            first.send("log::SetLogPosition", {"log_position": float(int(time.time()) + 1)})
            first.send("log::SetLogPosition", {"log_position": time.time() + 3600.5})
            stamps = [m["ts"] for m in first.messages("event::CheckResult")]
            first.send("log::SetLogPosition", {"log_position": stamps[1]})
            await wait_until(lambda: len(ledger) == 4, what="the receipt of r1 applied")
            stats = sat.node.endpoint_stats("master")
            assert stats.log_positions_ignored == 2
            assert stats.confirmed_log_position == stamps[1]
            text = await metrics_text(sat)
            assert 'router_log_positions_ignored_total{endpoint="master"} 2' in text
            first.writer.transport.abort()
            await wait_until(lambda: "master" not in sat.node.connections, what="drop seen")
            second = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            await wait_until(lambda: len(outputs(second)) == 4, what="the unconfirmed four")
            assert outputs(second) == [f"r{i}" for i in range(2, 6)]
            for peer in (agent, second):
                await peer.close()
        finally:
            await sat.stop()

    run(main(), timeout=60)


def test_a_dropped_session_is_not_kept_by_a_pending_checkpoint(tmp_path, pki, run):
    """An agent that never confirms what it gets (here: the commands sent down to it)
    keeps every checkpoint of the processed positions pending. A checkpoint must not
    hold the sessions that dropped meanwhile: it did, and with 1 % reconnect churn the
    soak's RSS grew by every dropped session's TLS state and buffers (issue 21)."""
    import gc
    import time

    spec = ClusterSpec(tmp_path, pki, CHAIN, timeouts=FAST)

    def holders(obj: object) -> set[str]:
        """Types of the objects that hold ``obj`` through a dict (a checkpoint's waits)."""
        return {type(h).__name__ for r in gc.get_referrers(obj) if isinstance(r, dict)
                for h in gc.get_referrers(r)}

    async def main():
        sat = await spec.start("sat1")
        try:
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            await wait_until(lambda: "agent1" in sat.node.connected_names
                             and "master" in sat.node.connected_names, what="sessions")
            for i in range(3):
                master.send("event::ExecuteCommand", {
                    "command": "dummy", "command_type": "check_command", "host": "agent1",
                    "service": f"svc{i}", "macros": {}, "endpoint": "agent1"},
                    ts=time.time())
            await wait_until(lambda: len(agent.messages("event::ExecuteCommand")) == 3,
                             what="the commands at the agent")
            # The master never confirms either: the checkpoints stay pending after the
            # agent is gone, as with thousands of agents some of which are always behind.
            agent.send("event::CheckResult", check_result("agent1", "disk", "r0"))
            await wait_until(lambda: outputs(master) == ["r0"], what="the result upstream")
            session = sat.node.connections["agent1"]
            # The agent never confirms: the checkpoints taken meanwhile wait for it.
            await wait_until(lambda: "_Checkpoint" in holders(session),
                             what="a checkpoint pending on the agent")
            await agent.close()
            await wait_until(lambda: "agent1" not in sat.node.connections, what="drop seen")
            await asyncio.sleep(0.3)        # a checkpoint tick after the drop
            gc.collect()
            assert "_Checkpoint" not in holders(session)
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=60)


def test_a_damaged_record_stops_the_replay_and_the_parent_goes_live(tmp_path, pki, run):
    """A damaged page found while replaying (the open checks only the ends of the log):
    the parent keeps its session and gets live traffic, the stop is logged with the
    recovery command and counted; closing the session would bring the parent back to
    the same page forever."""
    import struct

    import lmdb
    import orjson

    from replaylog import ReplayStore

    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       dialled={"master"}, timeouts=FAST)
    log_dir = spec.directory / "sat1" / "replaylog"

    def frame(i: int) -> bytes:
        body = orjson.dumps({"jsonrpc": "2.0", "method": "event::CheckResult",
                             "params": check_result("agent1", "s", f"old{i}")})
        return b"%d:%s," % (len(body), body)

    with ReplayStore(log_dir, sync=False) as store:
        store.append_many([("master", 1000.0 + i, frame(i), None) for i in range(10)])
    env = lmdb.open(str(log_dir), max_dbs=8, lock=False)
    with env.begin(write=True) as txn:      # record 5 of zone 0 shorter than its header
        txn.put(struct.pack(">IQ", 0, 5), b"\x00\x01", db=env.open_db(b"records", txn=txn))
    env.close()

    async def main():
        sat = await spec.start("sat1")
        try:
            server, master = await scripted_parent(spec, pki)
            await wait_until(lambda: sat.node.replay.corrupt_reads == 1,
                             what="the replay stopped at the damaged record")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            agent.send("event::CheckResult", check_result("agent1", "s", "live"))
            await wait_until(lambda: "live" in outputs(master), what="live result")
            assert outputs(master)[-1] == "live" and not master.closed
            assert "master" in sat.node.connected_names
            text = await metrics_text(sat)
            assert "router_replay_read_failures_total 1" in text
            server.close()
            await agent.close()
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=60)
