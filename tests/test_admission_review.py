"""Admission faults a review found (2026-12-07), each failing on the code before its
fix: max_connections exceeded by a batch of newcomers (and evictions counted twice); a
full node refusing its own dial to its parent; a handshake left waiting for its
deadline with a slot free and tokens coming; one IPv6 host counted as 2^64 sources."""

from __future__ import annotations

import asyncio
import socket

import pytest

from router.transport.admission import Admission
from tests.nodeutil import ClusterSpec, FakePeer, inbound_count, wait_until
from tests.pkiutil import make_test_pki
from tests.test_security_admission import FakeClock, FakeConn


# max_connections full of sessions: newcomers that arrive together must all be refused.
#
# A newcomer refused in Sessions.connection_made is aborted but stays in the admission's
# idle/pending tables until its connection_lost (a later loop turn); the next newcomer of
# the same batch "evicts" it (a no-op: it is already closing), counts an eviction, and is
# let in over the cap. Repeating that, sessions grow past max_connections.


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat", "agent1", "agent2"])


def test_batch_of_newcomers_cannot_exceed_max_connections(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")],
                       limits="max_connections = 2\nadmission_us_per_turn = 0")

    async def main():
        master = await spec.start("master")
        node = master.node
        port = spec.port("master")
        peers, socks = [], []
        try:
            for _ in range(2):                     # two anonymous sessions fill the cap
                peers.append(await FakePeer.connect(port, pki, None, server_name="master",
                                                    hello=False))
            await wait_until(lambda: len(node.anonymous) == 2, what="2 anonymous")
            # 10 bare TCP connections, queued in the backlog together (blocking connects
            # complete in the kernel while the loop does not run)
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", port))
                socks.append(s)
            await wait_until(lambda: node.admission.admitted == 12, what="all accepted")
            await asyncio.sleep(0.5)               # let every abort reach connection_lost
            assert inbound_count(node) <= 2, (
                inbound_count(node), node.admission.pending,
                dict(node.admission.evicted), dict(node.disconnects.values)
                if hasattr(node.disconnects, "values") else None)
        finally:
            for s in socks:
                s.close()
            for p in peers:
                await p.close()
            await master.stop()

    run(main(), 30)


# A node whose max_connections is taken by its children's sessions refuses its own
# dial to its parent (Sessions.connection_made applies the inbound cap to outbound
# connections too, although the fd ceiling exempts them "for dialling the parent"): the
# satellite never gets its parent link back while full.


def test_full_satellite_still_connects_to_its_parent(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat"], "master"),
                                       ("agent1", ["agent1"], "sat"),
                                       ("agent2", ["agent2"], "sat")],
                       dialled={"master"},
                       timeouts="reconnect_min = 0.1\nreconnect_max = 0.2",
                       limits="max_connections = 2")

    async def main():
        sat = await spec.start("sat")
        agents, master = [], None
        try:
            for name in ("agent1", "agent2"):
                agents.append(await FakePeer.connect(spec.port("sat"), pki, name,
                                                     server_name="sat"))
            await wait_until(lambda: {"agent1", "agent2"} <= set(sat.node.connections),
                             what="both agents connected")
            master = await spec.start("master")
            await wait_until(lambda: "master" in sat.node.connections, timeout=6,
                             what="the satellite's session to its parent")
        finally:
            for a in agents:
                await a.close()
            if master is not None:
                await master.stop()
            await sat.stop()

    run(main(), 40)


# A newcomer that preempts a stalled slot holder while the token bucket is empty is
# queued with a free slot and no token timer: nobody wakes it before its deadline.


def test_waiter_after_preemption_with_empty_bucket_is_granted_when_a_token_comes() -> None:
    clock = FakeClock()
    adm = Admission(100, 100, max_handshakes=1, clock=clock, rate=1, burst=1,
                    call_later=clock.call_later, stall_after=0.2)
    a, b = FakeConn("10.0.0.1:1"), FakeConn("10.0.0.2:1")
    adm.admit(a)
    adm.admit(b)
    assert adm.begin_handshake(a)            # takes the only slot and the only token
    clock.advance(0.3)                       # a stalls (0.3 s > stall_after)
    assert not adm.begin_handshake(b)        # a preempted; slot free, bucket at 0.3
    assert a.aborted and adm.handshaking == 0 and adm.waiting == 1
    for _ in range(50):                      # 5 s: tokens enough for several handshakes
        clock.advance(0.1)
    assert b.granted == 1, (adm.handshaking, adm.waiting, adm.tokens)


# Per-source accounting is keyed by the full IPv6 address (source_address): one IPv6
# host holds a /64 (2^64 source addresses), so the per-address idle cap and the
# round-robin of waiting handshakes treat each of its connections as a different source.
# An honest agent from another network then waits behind every one of them again (the
# issue-21 behaviour the FairQueue was made to prevent).


def attacker(i: int) -> FakeConn:
    return FakeConn(f"2001:db8:0:1::{i + 1:x}:{40000 + i}")     # one /64, one host


def test_one_ipv6_host_is_capped_like_one_source_address() -> None:
    adm = Admission(max_unauthenticated=1000, max_per_address=5, max_handshakes=10,
                    idle_grace=0.0)
    for i in range(50):
        adm.admit(attacker(i))
    assert adm.evicted.get("per_address", 0) == 45, (adm.evicted, adm.addresses())


def test_waiting_handshakes_of_one_ipv6_host_do_not_queue_ahead_of_others() -> None:
    adm = Admission(max_unauthenticated=1000, max_per_address=1000, max_handshakes=2)
    flood = [attacker(i) for i in range(50)]
    honest = FakeConn("2001:db8:5:5::1:5665")
    for conn in flood:
        adm.admit(conn)
        adm.begin_handshake(conn)           # 2 hold the slots, 48 wait
    adm.admit(honest)
    assert not adm.begin_handshake(honest)
    for holder in flood[:2]:                # two slots come free
        adm.release(holder)
    assert honest.granted == 1, sum(c.granted for c in flood)
