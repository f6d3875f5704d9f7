"""Issue 16 S3: pre-auth paths and handshake admission.

Unauthenticated connections have caps of their own (per source address and in total, the
oldest dropped for a newcomer), ``max_connections`` drops the oldest unauthenticated one
before it refuses a newcomer, handshakes have a concurrency cap, and log lines about
unauthenticated peers carry at most 200 escaped bytes of what they sent."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from router.transport.admission import Admission, peer_text, source_address
from tests.nodeutil import (ClusterSpec, FakePeer, client_ssl_context, metrics_text,
                            wait_until)
from tests.pkiutil import make_test_pki


class FakeConn:
    def __init__(self, address: str) -> None:
        self.address = address
        self.aborted: str | None = None
        self.granted = 0

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def handshake_slot_granted(self) -> None:
        self.granted += 1

    def unread_bytes(self) -> int:
        return 0


# -- pure ------------------------------------------------------------------------------------

def client_hello() -> bytes:
    """A real TLS ClientHello, the first flight of a handshake that will stall (a record
    header alone no longer starts one: router.protocol.tlsrecord)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="master")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_peer_text_is_short_escaped_and_says_what_was_cut() -> None:
    text = peer_text(b"GET / HTTP/1.1\r\n" + b"\x00\xff" * 30_000)
    assert len(text) < 200 * 4 + 40 and text.endswith("(+59816 bytes)")
    assert "\\r\\n" in text and "\\x00" in text and "\n" not in text
    assert peer_text(b"short") == "b'short'"
    assert "\n" not in peer_text("é\n") and "\\n" in peer_text("é\n")
    assert source_address("10.0.0.1:5665") == "10.0.0.1"
    assert source_address("::1:5665") == "::/64"         # an IPv6 host owns its /64
    assert source_address("2001:db8:0:1::7:5665") == "2001:db8:0:1::/64"


def test_per_address_and_total_caps_drop_the_oldest() -> None:
    adm = Admission(max_unauthenticated=4, max_per_address=2, max_handshakes=10,
                    idle_grace=0.0)
    a1, a2, a3 = (FakeConn(f"10.0.0.1:{p}") for p in (1, 2, 3))
    assert adm.admit(a1) == [] and adm.admit(a2) == []
    assert adm.admit(a3) == [a1] and a1.aborted and "10.0.0.1" in a1.aborted
    assert adm.pending == 2 and adm.evicted == {"per_address": 1}
    b1, b2, b3 = (FakeConn(f"10.0.0.2:{p}") for p in (1, 2, 3))
    adm.admit(b1)
    adm.admit(b2)
    assert adm.admit(b3) == [b1]                      # b's own oldest, per address
    c1 = FakeConn("10.0.0.3:1")
    assert adm.admit(c1) == [a2]                      # total full: the oldest overall
    assert adm.evicted == {"per_address": 2, "total": 1} and adm.pending == 4
    adm.release(a3)                                   # authenticated: no longer counted
    assert adm.pending == 3 and adm.addresses() == 2
    assert adm.oldest(exclude=b2) is b3 and b3.aborted   # max_connections full
    assert adm.evicted["max_connections"] == 1
    assert adm.oldest(exclude=c1) is b2
    assert adm.oldest(exclude=c1) is None


def test_handshakes_in_progress_are_never_dropped_for_a_newcomer() -> None:
    """A reconnect storm from one address (agents behind NAT): every connection has sent
    its ClientHello, so the idle caps drop none of them (dropping handshakes in progress
    livelocked 5 000 agents from 127.0.0.1 at 4 448 connected); an idle socket among
    them is still the first to go, for a newcomer and at max_connections."""
    now = [0.0]
    adm = Admission(max_unauthenticated=3, max_per_address=2, max_handshakes=100,
                    idle_grace=2.0, clock=lambda: now[0])
    storm = [FakeConn(f"10.0.0.9:{p}") for p in range(10)]
    for conn in storm:
        assert adm.admit(conn) == []
        assert adm.begin_handshake(conn)
    assert adm.pending == 10 and adm.evicted == {}
    assert not any(conn.aborted for conn in storm)
    idle1, idle2, idle3 = (FakeConn(f"10.0.0.9:{p}") for p in (100, 101, 102))
    assert adm.admit(idle1) == [] and adm.admit(idle2) == []
    # accepted but not read yet: not idle for long enough to be dropped, so let in
    fresh = FakeConn("10.0.0.9:99")
    assert adm.admit(fresh) == [] and not idle1.aborted
    adm.release(fresh)
    now[0] = 2.5
    assert adm.admit(idle3) == [idle1]                # the oldest idle, not a handshake
    assert adm.oldest(exclude=idle3) is idle2         # max_connections: idle ones first
    assert adm.oldest(exclude=idle3) is storm[0]      # then the oldest in progress
    assert not any(conn.aborted for conn in storm[1:])


def test_handshake_slots_wait_in_order_and_are_handed_on() -> None:
    adm = Admission(max_unauthenticated=10, max_per_address=10, max_handshakes=2)
    conns = [FakeConn(f"10.0.0.{i}:1") for i in range(5)]
    for conn in conns:
        adm.admit(conn)
    assert adm.begin_handshake(conns[0]) and adm.begin_handshake(conns[1])
    assert not adm.begin_handshake(conns[2]) and not adm.begin_handshake(conns[3])
    assert not adm.begin_handshake(conns[2])           # asking again does not queue twice
    assert adm.handshaking == 2 and adm.waiting == 2 and adm.handshake_waits == 2
    adm.release(conns[3])                               # a waiting one went away
    assert adm.waiting == 1
    adm.release(conns[0])                               # done: the slot goes to conns[2]
    assert conns[2].granted == 1 and adm.handshaking == 2 and adm.waiting == 0
    adm.release(conns[1])
    adm.release(conns[2])
    assert adm.handshaking == 0 and adm.pending == 1


# -- over real sockets -------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "agent1"])


def spec_for(tmp_path, pki, limits: str, timeouts: str = "") -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master")],
                       limits=limits, timeouts=timeouts)


async def http_over_tls(port: int, pki, request: bytes) -> bytes:
    """What an HTTP client without a client certificate (curl -k) gets back."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl_context(pki, None), server_hostname="master")
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def idle_connections(port: int, n: int, gap: float = 0.0
                           ) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``n`` TCP connections that send nothing, ``gap`` seconds apart."""
    out = []
    for _ in range(n):
        out.append(await asyncio.open_connection("127.0.0.1", port))
        if gap:
            await asyncio.sleep(gap)
    return out


def test_45_idle_tcp_connections_do_not_lock_out_an_agent(tmp_path, pki, run, caplog):
    spec = spec_for(tmp_path, pki, "max_connections = 40")

    async def main():
        master = await spec.start("master")
        node = master.node
        idle = []
        try:
            idle = await idle_connections(spec.port("master"), 45)
            await wait_until(lambda: node.admission.pending == 40, what="40 pending")
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="the agent's hello")
            assert "agent1" in node.connections
            assert node.admission.evicted["max_connections"] >= 6
            text = await metrics_text(master)
            assert 'router_unauthenticated_evicted_total{reason="max_connections"}' in text
            # the oldest idle sockets were the ones dropped
            closed = [await closed_by_peer(r) for r, _ in idle[:6]]
            assert all(closed)
            # logged once for the address (rate-limited), not once per dropped socket
            drops = [r for r in caplog.records
                     if "dropped unauthenticated connection" in r.getMessage()]
            assert len(drops) == 1 and "max_connections reached" in drops[0].getMessage()
            await agent.close()
        finally:
            for _, w in idle:
                w.close()
            await master.stop()

    run(main())


def test_per_address_cap_drops_the_oldest_of_that_address(tmp_path, pki, run):
    spec = spec_for(tmp_path, pki, "max_unauthenticated_per_address = 5",
                    "unauthenticated_idle = 0.05")

    async def main():
        master = await spec.start("master")
        node = master.node
        idle = []
        try:
            idle = await idle_connections(spec.port("master"), 8, gap=0.1)
            await wait_until(lambda: node.admission.evicted.get("per_address") == 3,
                             what="three evicted")
            assert node.admission.pending == 5
            for reader, _ in idle[:3]:
                assert await closed_by_peer(reader)
            # an agent still gets in (it evicts the oldest idle one of 127.0.0.1)
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
            await agent.close()
        finally:
            for _, w in idle:
                w.close()
            await master.stop()

    run(main())


def test_stalled_handshake_holds_the_only_slot_until_its_deadline(tmp_path, pki, run):
    spec = spec_for(tmp_path, pki, "max_concurrent_handshakes = 1", "handshake = 1.5")

    async def main():
        master = await spec.start("master")
        node = master.node
        try:
            # A ClientHello and nothing more: a handshake that started and stalls.
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port("master"))
            writer.write(client_hello())
            await wait_until(lambda: node.admission.handshaking == 1, what="slot taken")
            # (so that the agent's own 1.5 s deadline outlives the staller's by a margin)
            await asyncio.sleep(0.8)
            loop = asyncio.get_running_loop()
            started = loop.time()
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), timeout=10,
                             what="the agent's hello after the staller's deadline")
            assert node.admission.handshake_waits >= 1
            assert loop.time() - started > 0.3       # it had to wait for the slot
            await asyncio.wait_for(reader.read(), 5)  # our first flight, then EOF: cut
            assert node.admission.handshaking == 0 and node.admission.pending == 0
            text = await metrics_text(master)
            assert "router_handshake_waits_total 1" in text
            writer.close()
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_hellos_past_the_turns_admission_budget_wait_for_later_turns(tmp_path, pki, run):
    # 1 µs: the first piece of admission work in a turn spends the turn's budget.
    spec = spec_for(tmp_path, pki, "admission_us_per_turn = 1")

    async def main():
        master = await spec.start("master")
        node = master.node
        idle = []
        try:
            idle = await idle_connections(spec.port("master"), 8)
            await wait_until(lambda: node.admission.pending == 8, what="8 pending")
            hello = client_hello()
            for _, writer in idle:          # eight hellos, read in one poll of the node
                writer.write(hello)
            await wait_until(lambda: node.admission.handshaking == 8, what="8 handshakes")
            assert node.turn_budget.deferred >= 7    # one a turn, the others after it
            # an agent still gets through (its handshake steps wait their turns too)
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="the agent's hello")
            text = await metrics_text(master)
            assert f"router_admission_deferred_total {node.turn_budget.deferred}" in text
            await agent.close()
        finally:
            for _, w in idle:
                w.close()
            await master.stop()

    run(main())


def test_60000_byte_http_request_gives_a_short_log_line(tmp_path, pki, run, caplog):
    spec = spec_for(tmp_path, pki, "")
    request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"A" * 60_000 + b"\r\n\r\n"

    async def main():
        master = await spec.start("master")
        try:
            # over TLS without a client certificate (what curl -k would do)
            answer = await http_over_tls(spec.port("master"), pki, request)
            assert answer.startswith(b"HTTP/1.1 400")
            # and in plain text on the TLS port
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port("master"))
            writer.write(request)
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await wait_until(lambda: master.node.handshake_failures.total() >= 1,
                             what="the plain-text handshake failure")
        finally:
            await master.stop()

    run(main())
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("router")]
    assert any("client speaks HTTP" in line for line in lines)
    assert max(len(line) for line in lines) < 600, max(lines, key=len)[:300]
    http = next(line for line in lines if "client speaks HTTP" in line)
    assert "bytes)" in http and "AAAA" in http


def test_http_clients_are_logged_once_per_address(tmp_path, pki, run, caplog):
    spec = spec_for(tmp_path, pki, "")

    async def main():
        master = await spec.start("master")
        try:
            for _ in range(5):
                await http_over_tls(spec.port("master"), pki, b"GET / HTTP/1.0\r\n\r\n")
            assert master.node.disconnects.get(("not_jsonrpc",)) == 5
        finally:
            await master.stop()

    caplog.set_level(logging.INFO, logger="router")
    run(main())
    per_loop = [r for r in caplog.records if "client speaks HTTP" in r.getMessage()]
    assert len(per_loop) == 1          # one line, not one per client


def test_new_limits_are_validated_with_their_line() -> None:
    from router.config import parse_config
    from router.errors import ConfigError

    base = ('[node]\nname = "m1"\ndata_dir = "/tmp/x"\n[[zones]]\nname = "master"\n'
            'endpoints = ["m1"]\n[[endpoints]]\nname = "m1"\n[limits]\n')
    cfg = parse_config(base)
    assert (cfg.limits.max_unauthenticated, cfg.limits.max_unauthenticated_per_address,
            cfg.limits.max_concurrent_handshakes, cfg.limits.max_invalid_messages,
            cfg.limits.max_results, cfg.limits.max_results_per_zone) == (
        1000, 50, 200, 100, 1_000_000, 250_000)
    for key in ("max_unauthenticated", "max_unauthenticated_per_address",
                "max_concurrent_handshakes", "max_invalid_messages", "max_results",
                "max_results_per_zone"):
        with pytest.raises(ConfigError) as err:
            parse_config(base + f"{key} = 0\n", "r.toml")
        assert err.value.line == 10 and "positive integer" in str(err.value), key
        with pytest.raises(ConfigError) as err:
            parse_config(base + f'{key} = "many"\n', "r.toml")
        assert err.value.line == 10, key


# -- issue 17 item 3: token bucket for new handshakes ------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object]] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback) -> None:
        self.timers.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now + 1e-9]
        self.timers = [t for t in self.timers if t[0] > self.now + 1e-9]
        for _, callback in due:
            callback()


def test_token_bucket_delays_handshakes_over_the_budget_in_order() -> None:
    clock = FakeClock()
    adm = Admission(max_unauthenticated=100, max_per_address=100, max_handshakes=100,
                    clock=clock, rate=10, burst=3, call_later=clock.call_later)
    conns = [FakeConn(f"10.0.0.{i}:1") for i in range(6)]
    for conn in conns:
        adm.admit(conn)
    assert all(adm.begin_handshake(c) for c in conns[:3])     # the burst
    assert not adm.begin_handshake(conns[3]) and not adm.begin_handshake(conns[4])
    assert not adm.begin_handshake(conns[3])                  # asking again: no second place
    assert adm.rate_limited == 2 and adm.waiting == 2 and adm.handshake_waits == 0
    assert not conns[3].aborted                               # delayed, not closed
    assert len(clock.timers) == 1                             # one timer, not one each
    clock.advance(0.1)                                        # one token: the oldest goes
    assert conns[3].granted == 1 and conns[4].granted == 0 and adm.waiting == 1
    adm.release(conns[4])                                     # gave up (its deadline)
    assert adm.waiting == 0
    assert not adm.begin_handshake(conns[5])                  # the bucket is empty
    clock.advance(0.1)
    assert conns[5].granted == 1 and adm.handshaking == 5
    clock.advance(10)                                         # refills to burst, no more
    assert adm.tokens == 3.0


def test_token_bucket_off_and_reload() -> None:
    clock = FakeClock()
    adm = Admission(10_000, 10_000, 10_000, clock=clock, call_later=clock.call_later)
    conns = [FakeConn(f"10.0.1.{i}:1") for i in range(1000)]
    for conn in conns:
        adm.admit(conn)
    assert all(adm.begin_handshake(c) for c in conns[:500])    # rate 0: off
    assert adm.rate_limited == 0 and not clock.timers
    adm.set_rate(5, 2)                                         # reload: on, a full burst
    assert adm.begin_handshake(conns[500]) and adm.begin_handshake(conns[501])
    assert not adm.begin_handshake(conns[502]) and not adm.begin_handshake(conns[503])
    adm.set_rate(0, 2)                                         # reload: off again, all go
    assert conns[502].granted == 1 and conns[503].granted == 1 and adm.waiting == 0


def test_token_bucket_waits_behind_the_handshake_slots() -> None:
    clock = FakeClock()
    adm = Admission(100, 100, max_handshakes=1, clock=clock, rate=1, burst=1,
                    call_later=clock.call_later)
    a, b = FakeConn("10.0.2.1:1"), FakeConn("10.0.2.2:1")
    adm.admit(a)
    adm.admit(b)
    assert adm.begin_handshake(a) and not adm.begin_handshake(b)
    clock.advance(5)                          # tokens but no slot: b still waits
    assert b.granted == 0
    adm.release(a)                            # the slot and a token: b goes
    assert b.granted == 1 and adm.tokens == 0.0


def test_stalled_slot_holders_are_closed_a_few_per_loop_turn() -> None:
    """A flood of stalled ClientHellos: every slot holder stalls while as many wait.
    One check closes at most PREEMPTIONS_PER_TURN of them (each hands its slot on);
    the rest go on the next turns (a 0 s timer), not all 200 in one callback."""
    from router.transport.admission import PREEMPTIONS_PER_TURN as PER_TURN
    clock = FakeClock()
    adm = Admission(1000, 1000, max_handshakes=50, clock=clock, call_later=clock.call_later,
                    stall_after=2.0)
    holders = [FakeConn(f"10.0.3.{i}:1") for i in range(50)]
    waiting = [FakeConn(f"10.0.4.{i}:1") for i in range(50)]
    for conn in holders + waiting:
        adm.admit(conn)
        adm.begin_handshake(conn)
    assert adm.handshaking == 50 and adm.waiting == 50
    clock.advance(1.0)                          # the first check: nobody stalled 2 s yet
    assert not any(c.aborted for c in holders)
    clock.advance(1.0)                          # the next one: all stalled, a few go
    assert sum(1 for c in holders if c.aborted) == PER_TURN
    assert sum(c.granted for c in waiting) == PER_TURN
    turns = 1
    while any(not c.aborted for c in holders):
        clock.advance(0.0)                      # the next loop turn
        turns += 1
        assert sum(1 for c in holders if c.aborted) <= PER_TURN * turns
    assert turns == -(-50 // PER_TURN)
    assert all(c.granted == 1 for c in waiting) and adm.waiting == 0
    assert adm.evicted["stalled_handshake"] == 50


def test_passed_handshake_deadlines_are_acted_on_a_few_per_loop_turn() -> None:
    from router.transport.admission import EXPIRIES_PER_TURN as PER_TURN
    clock = FakeClock()
    adm = Admission(1000, 1000, 1000, clock=clock, call_later=clock.call_later)
    done: list[int] = []
    for i in range(100):
        adm.expire_soon(lambda i=i: done.append(i))
    assert done == [] and len(clock.timers) == 1     # one timer for all of them
    clock.advance(0.0)
    assert done == list(range(PER_TURN))             # the oldest first, a turn's worth
    while len(done) < 100:
        clock.advance(0.0)
    assert done == list(range(100)) and not clock.timers
    adm.expire_soon(lambda: done.append(100))        # idle again: a new timer
    clock.advance(0.0)
    assert done[-1] == 100
    at_once = Admission(10, 10, 10)                  # no call_later: at once
    at_once.expire_soon(lambda: done.append(101))
    assert done[-1] == 101


def test_new_connection_limits_are_validated_and_default_off() -> None:
    from router.config import parse_config
    from router.config.emit import config_to_toml
    from router.errors import ConfigError

    base = ('[node]\nname = "m1"\ndata_dir = "/tmp/x"\n[[zones]]\nname = "master"\n'
            'endpoints = ["m1"]\n[[endpoints]]\nname = "m1"\n[limits]\n')
    cfg = parse_config(base)
    assert (cfg.limits.new_connections_per_second, cfg.limits.new_connections_burst) == (
        0, 100)
    cfg = parse_config(base + "new_connections_per_second = 500\nnew_connections_burst = 50\n")
    assert (cfg.limits.new_connections_per_second, cfg.limits.new_connections_burst) == (
        500, 50)
    assert "new_connections_per_second = 500" in config_to_toml(cfg)
    for key, value, text in (("new_connections_per_second", "-1", ">= 0"),
                             ("new_connections_burst", "0", "positive integer"),
                             ("new_connections_per_second", '"fast"', "")):
        with pytest.raises(ConfigError) as err:
            parse_config(base + f"{key} = {value}\n", "r.toml")
        assert err.value.line == 10 and text in str(err.value), key


def test_token_bucket_delays_a_real_handshake_and_counts_it(tmp_path, pki, run):
    spec = spec_for(tmp_path, pki, "new_connections_per_second = 2\nnew_connections_burst = 1")

    async def main():
        master = await spec.start("master")
        node = master.node
        try:
            # The first handshake takes the only token (a ClientHello, then it stalls).
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port("master"))
            writer.write(client_hello())
            await wait_until(lambda: node.admission.handshaking == 1, what="token taken")
            loop = asyncio.get_running_loop()
            started = loop.time()
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), timeout=10,
                             what="the agent's hello once a token came")
            assert node.admission.rate_limited == 1
            assert loop.time() - started > 0.2        # it waited about 0.5 s for a token
            text = await metrics_text(master)
            assert "router_handshakes_rate_limited_total 1" in text
            writer.close()
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_token_bucket_is_applied_on_reload(tmp_path, pki, run):
    spec = spec_for(tmp_path, pki, "max_concurrent_handshakes = 200")

    async def main():
        master = await spec.start("master")
        try:
            assert master.node.admission.rate == 0
            spec.limits = "new_connections_per_second = 7\nnew_connections_burst = 3"
            (spec.directory / "master.toml").write_text(spec.toml("master"))
            assert (await master.reload("test")).result == "ok"
            assert (master.node.admission.rate, master.node.admission.burst) == (7, 3)
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            await wait_until(lambda: agent.messages("icinga::Hello"), what="hello")
            await agent.close()
        finally:
            await master.stop()

    run(main())
