"""Config sync after a review (2026-12-07): a zone change never reached a child that was
still replaying its log when the change came (it was sent to live sessions only, and
the child had got the zones of before when it connected). Fails on the code before its
fix. (An unknown zone in an update: tests/test_configsync.py.)
"""
from __future__ import annotations

import asyncio
import time

from router.protocol import jsonrpc, netstring
from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

GLOBAL_ZONE = '[[zones]]\nname = "global-templates"\nglobal = true\n'


def test_zone_change_reaches_a_child_that_was_replaying(tmp_path, run):
    pki = make_test_pki(tmp_path / "pki", ["master1", "agent1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master1"], None),
                                       ("agent1", ["agent1"], "master")])
    spec.limits = 'send_queue_high_bytes = "256KiB"\nsend_queue_low_bytes = "64KiB"'
    zd = tmp_path / "zones.d"
    (zd / "agent1").mkdir(parents=True)
    (zd / "agent1/hosts.conf").write_text('object Host "db01" {}\n')

    async def main():
        master = await spec.start("master1", extra=GLOBAL_ZONE,
                                  node_extra=f'zones_dir = "{zd}"')
        node = master.node
        try:
            # A backlog for the agent's zone (what it missed while it was away).
            big = "x" * 60000
            now = time.time()
            for i in range(600):
                ts = now - 600 + i + 0.5
                frame = netstring.encode(jsonrpc.notification(
                    "event::CheckResult", check_result("db01", "s", big), ts=ts))
                assert node.replay.writer.submit("agent1", ts, frame, None)
            await asyncio.to_thread(node.replay.writer.flush, 10.0)

            agent = await FakePeer.connect(spec.port("master1"), pki, "agent1",
                                           server_name="master1")
            agent._task.cancel()                       # the agent reads slowly
            await wait_until(lambda: "agent1" in node.connections, what="agent session")
            await asyncio.sleep(1.0)
            assert "agent1" in node.connections
            assert "agent1" not in node.connected_names, "replay should still run"

            # The operator changes the agent's zone and reloads the master.
            (zd / "agent1/hosts.conf").write_text('object Host "db02" {}\n')
            record = await master.reload("test")
            assert record.result == "ok", record.error

            # The agent reads again; its replay finishes and it goes live.
            agent._task = asyncio.ensure_future(agent._read_loop())
            await wait_until(lambda: "agent1" in node.connected_names, timeout=60,
                             what="replay done")
            await asyncio.sleep(1.0)
            updates = [m["params"]["update"]["agent1"] for m in
                       agent.messages("config::Update")]
            assert updates, "the connect-time update was not received"
            assert updates[-1] == {"/_etc/hosts.conf": 'object Host "db02" {}\n'}, (
                f"child still holds the old zone: {updates}")
            await agent.close()
        finally:
            await master.stop()

    run(main(), timeout=120)


def test_unchanged_zones_are_linked_into_the_new_generation_not_rewritten(tmp_path):
    """With 2 000 agent zones, one changed file rewrote and synced all 6 000 files in the
    event loop (about five seconds, review): unchanged zones are now hard links to the
    files already on disk, and the old generation is removed in a thread."""
    import os

    from router.features.configsync import ZoneStore
    from tests.test_configsync import zone

    store = ZoneStore(str(tmp_path / "api"))
    zones = {f"agent{i}": zone(f"agent{i}", {"/_etc/hosts.conf": f"host {i}\n"})
             for i in range(20)}
    store.replace(zones)
    link = tmp_path / "api/zones"
    before = {n: os.stat(link / n / "_etc/hosts.conf").st_ino for n in zones}
    changed = dict(zones)
    changed["agent7"] = zone("agent7", {"/_etc/hosts.conf": "changed\n"})
    store.replace(changed, zones)
    after = {n: os.stat(link / n / "_etc/hosts.conf").st_ino for n in zones}
    assert {n for n in zones if after[n] != before[n]} == {"agent7"}
    assert (link / "agent7/_etc/hosts.conf").read_text() == "changed\n"
    assert (link / "agent3/_etc/hosts.conf").read_text() == "host 3\n"
    assert store.cleanup is not None
    store.cleanup.join(10)
    assert sorted(os.listdir(tmp_path / "api")) == ["zones", "zones.2"]
    assert (link / "agent3/_etc/hosts.conf").read_text() == "host 3\n"
