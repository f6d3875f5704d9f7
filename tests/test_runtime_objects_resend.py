"""Runtime objects re-sent to an HA peer that connects are pushed into its send queue in
one go (router/node/sessions.py -> Node.send_to, no back-pressure). With more kept
objects than the queue's hard limit (4 x send_queue_high_bytes, 32 MiB by default:
50 000 objects of ~1 KB are 47 MB), the next ordinary message fanned out to the peer
(any check result relayed through our zone) finds the queue "above its hard limit" and
the node disconnects its own HA partner as a slow consumer, although the peer reads as
fast as it can. The peer reconnects, gets everything again, and is cut again."""

from __future__ import annotations

import asyncio

from tests.nodeutil import ClusterSpec, FakePeer, check_result, wait_until
from tests.pkiutil import make_test_pki

UPDATE = "config::UpdateObject"
N_OBJECTS = 12000


def _host(i: int) -> dict:
    name = f"api-host-{i}"
    return {"name": name, "type": "Host", "version": 1.0, "zone": "agent1",
            "config": f'object Host "{name}" {{ check_command = "dummy"; vars.note = "'
                      + "x" * 900 + '" }'}


def test_ha_peer_is_not_cut_as_slow_consumer_by_the_runtime_resend(tmp_path, run) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "sat1", "sat2", "agent1"])
    # high water 256 KiB -> hard limit 1 MiB; 12 000 objects of ~1 KB = ~12 MB (the
    # defaults, 8 MiB / 32 MiB, with 50 000 objects of ~1 KB = 47 MB, are the same case)
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1", "sat2"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       limits="send_queue_high_bytes = 262144\n"
                              "send_queue_low_bytes = 65536")

    async def main() -> None:
        sat = await spec.start("sat1")
        master = sat2 = None
        try:
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            await wait_until(lambda: "master" in sat.node.connected_names, what="master")
            for i in range(N_OBJECTS):
                master.send(UPDATE, _host(i))
            await wait_until(lambda: len(sat.node.runtime) == N_OBJECTS, timeout=30,
                             what="all runtime objects kept")

            stop = False

            async def results() -> None:      # the master's ordinary traffic goes on
                while not stop:
                    master.send("event::CheckResult",
                                check_result("api-host-1", None, "up"))
                    await asyncio.sleep(0.005)

            # sat2 connects (nothing was logged for it: e.g. sat1 just restarted with
            # its objects from disk), then results flow as usual
            sat2 = await FakePeer.connect(spec.port("sat1"), pki, "sat2",
                                          server_name="sat1")
            await wait_until(lambda: "sat2" in sat.node.connected_names, what="sat2")
            feeder = asyncio.ensure_future(results())
            try:
                await wait_until(lambda: len(sat2.messages(UPDATE)) >= N_OBJECTS
                                 or sat2.closed, timeout=20,
                                 what="the runtime objects at sat2")
                await asyncio.sleep(0.5)
            finally:
                stop = True
                await feeder
            assert not sat2.closed, (
                f"sat1 disconnected its HA peer sat2 as a slow consumer after queueing "
                f"all {N_OBJECTS} runtime objects for it at once; sat2 got "
                f"{len(sat2.messages(UPDATE))} of them")
            assert len(sat2.messages(UPDATE)) >= N_OBJECTS
        finally:
            for peer in (sat2, master):
                if peer is not None:
                    await peer.close()
            await sat.stop()

    run(main(), timeout=90)
