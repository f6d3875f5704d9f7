"""Bad input over real TLS: each case gives a log line naming the peer, a counter, the
connection closed or the message refused, and a well-behaved peer that keeps working."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import pytest

from tests.nodeutil import (ClusterSpec, FakePeer, check_result, client_ssl_context,
                            metrics_text, status_json, wait_until)
from tests.pkiutil import make_test_pki

FAST_TIMEOUTS = "handshake = 1.0\nanonymous = 1.0\nenrollment = 2.0\nslow_consumer = 2.0"


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1", "agent2", "stranger"],
                         other_ca_names=["intruder"], expired_names=["agent-old"])


def make_spec(tmp_path, pki, extra_limits: str = "") -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master"),
                                       ("agent-old", ["agent-old"], "master"),
                                       ("intruder", ["intruder"], "master")],
                       timeouts=FAST_TIMEOUTS,
                       limits="max_message_size_child = 32768" + extra_limits)


@pytest.fixture
def spec(tmp_path, pki):
    return make_spec(tmp_path, pki)


async def good_peer_still_works(master, spec, pki, tag: str) -> None:
    """agent2 connects (or is connected) and gets a result stored: nobody else suffered."""
    good = await FakePeer.connect(spec.port("master"), pki, "agent2", server_name="master")
    good.send("event::CheckResult", check_result("agent2", "ping", f"still fine {tag}"))

    async def stored():
        doc = await status_json(master, "/v1/objects/checkresults?host=agent2&service=ping")
        return doc["results"] and doc["results"][0]["output"] == f"still fine {tag}"
    await wait_until(stored, what="the good peer's result")
    await good.close()


FRAMING_CASES = {
    "too_large": b"999999:",            # announced above the 32 KiB child limit, no body yet
    "bad_prefix": b"12a:",
    "missing_comma": b"2:{}X",
    "invalid_json": b"3:{x},",
    "not_an_object": b"2:[],",
    "deep_nesting": b"%d:%b," % (20000, b"[" * 10000 + b"]" * 10000),
}
EXPECTED_REASON = {"too_large": "too_large", "bad_prefix": "framing",
                   "missing_comma": "framing", "invalid_json": "invalid_message",
                   "not_an_object": "invalid_message", "deep_nesting": "invalid_message"}


@pytest.mark.parametrize("case", sorted(FRAMING_CASES))
def test_protocol_violations_close_only_the_offender(spec, pki, run, caplog, case):
    async def main():
        master = await spec.start("master")
        try:
            bad = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                         server_name="master")
            await wait_until(lambda: bad.messages("icinga::Hello"), what="hello")
            bad.send_raw(FRAMING_CASES[case])
            await bad.wait_closed()
            reason = EXPECTED_REASON[case]
            text = await metrics_text(master)
            assert f'router_disconnects_total{{endpoint="-",reason="{reason}"}} 1' in text
            assert any("agent1" in r.getMessage() and "protocol error" in r.getMessage()
                       for r in caplog.records if r.levelno >= logging.WARNING)
            await good_peer_still_works(master, spec, pki, case)
        finally:
            await master.stop()

    run(main())


def test_unknown_cn_is_anonymous_refused_and_closed(spec, pki, run, caplog):
    async def main():
        master = await spec.start("master")
        try:
            peer = await FakePeer.connect(spec.port("master"), pki, "stranger",
                                          server_name="master")
            peer.send("event::CheckResult", check_result("stranger", "x", "sneaky"))
            await peer.wait_closed(timeout=5)  # anonymous timeout is 1 s here
            status = await status_json(master)
            assert status["totals"]["check_results"] == 0
            text = await metrics_text(master)
            assert 'reason="anonymous"' in text
            assert 'router_disconnects_total{endpoint="-",reason="timeout_anonymous"} 1' in text
            assert "stranger" in caplog.text and "not a configured endpoint" in caplog.text
            await good_peer_still_works(master, spec, pki, "stranger")
        finally:
            await master.stop()

    run(main())


@pytest.mark.parametrize("who,reason", [("intruder", "unknown_ca"),
                                        ("agent-old", "cert_expired")])
@pytest.mark.parametrize("threads", [0, 2], ids=["handshake-inline", "handshake-threads"])
@pytest.mark.parametrize("library", ["bundled", "system"])
def test_bad_certificates_fail_the_handshake(tmp_path, pki, run, caplog, who, reason,
                                             threads, library):
    """Both handshake paths (in the loop thread, in TLS threads) on both TLS libraries
    count and log a bad certificate and keep serving good peers."""
    spec = make_spec(tmp_path, pki, f"\nhandshake_threads = {threads}")
    spec.libraries["master"] = library

    async def main():
        master = await spec.start("master")
        assert (master.node.tls_pool is None) == (threads == 0)
        assert master.node.server_context.name == library
        try:
            ca = pki.ca_cert
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                peer = await FakePeer.connect(spec.port("master"), pki, who, ca=ca,
                                              server_name="master")
                # TLS 1.3: the rejection may only surface on the first read.
                await peer.wait_closed(timeout=5)
                raise ConnectionError("closed by the node")
            text = await metrics_text(master)
            await wait_until(lambda: True)
            assert f'router_handshake_failures_total{{reason="{reason}"}} 1' in text, text
            assert "TLS handshake failed" in caplog.text and reason in caplog.text
            await good_peer_still_works(master, spec, pki, who)
        finally:
            await master.stop()

    run(main())


def test_client_that_never_finishes_the_handshake(spec, pki, run):
    async def main():
        master = await spec.start("master")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", spec.port("master"))
            data = await asyncio.wait_for(reader.read(), 5)  # node closes after 1 s
            assert data == b""
            text = await metrics_text(master)
            assert 'router_handshake_failures_total{reason="timeout"} 1' in text
            writer.close()
            await good_peer_still_works(master, spec, pki, "silent")
        finally:
            await master.stop()

    run(main())


def test_http_client_on_the_cluster_port_gets_a_pointer(spec, pki, run):
    async def main():
        master = await spec.start("master")
        try:
            ctx = client_ssl_context(pki, "agent1")
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", spec.port("master"), ssl=ctx, server_hostname="master")
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            assert data.startswith(b"HTTP/1.1 400") and b"/v1/status" in data
            writer.close()
        finally:
            await master.stop()

    run(main())


def test_peer_that_stops_reading_is_bounded_then_cut(tmp_path, pki, run, caplog):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       timeouts=FAST_TIMEOUTS,
                       limits="send_queue_high_bytes = 65536\nsend_queue_low_bytes = 16384")

    async def main():
        sat = await spec.start("sat1")
        try:
            # The parent connects but never reads what the satellite sends it.
            ctx = client_ssl_context(pki, "master")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1",
                                                                 spec.port("sat1")))
            _, stuck_writer = await asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname="sat1", limit=1024)
            node = sat.node
            await wait_until(lambda: "master" in node.connections, what="parent session")
            stuck_writer.transport.pause_reading()
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            payload = "x" * 900
            for i in range(10000):  # ~10 MB towards a parent that reads nothing
                agent.send("event::CheckResult",
                           check_result("agent1", f"svc{i % 50}", f"{i} {payload}"))

            def paused():
                return any(c.reading_paused for c in node.all_connections)
            await wait_until(paused, what="the agent's connection paused")
            parent_conn = node.connections["master"]
            hard = node.queue_limits.hard_bytes
            assert parent_conn.queue.bytes <= hard
            # The slow consumer is cut after slow_consumer (2 s) without progress ...
            await wait_until(lambda: "master" not in node.connections, timeout=10,
                             what="slow consumer disconnected")
            assert "slow consumer" in caplog.text
            # ... and the agent is read again.
            await wait_until(lambda: not paused(), what="agent resumed")
            text = await metrics_text(sat)
            assert 'reason="slow_consumer"' in text
            assert not agent.closed
            stuck_writer.transport.abort()
            await agent.close()
        finally:
            await sat.stop()

    run(main(), timeout=90)


def test_an_agent_held_back_by_a_slow_parent_is_not_timed_out(tmp_path, pki, run, caplog):
    """Back-pressure from a parent that stops reading holds the agent's input unread for
    longer than the liveness timeout: the agent is not closed as silent (it was: the
    10 000-agent chain lost 1 254 agents that way, issue 22), and once the parent reads
    again every result arrives."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       timeouts="heartbeat_interval = 0.5\nliveness = 2.0\n"
                                "slow_consumer = 60.0",
                       limits="send_queue_high_bytes = 65536\nsend_queue_low_bytes = 16384")
    count = 3000

    async def main():
        sat = await spec.start("sat1")
        try:
            # A parent with a tiny receive window that stops reading (but keeps
            # sending heartbeats: it is alive).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1",
                                                                 spec.port("sat1")))
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=client_ssl_context(pki, "master"), server_hostname="sat1")
            master = FakePeer(reader, writer)
            master.send("icinga::Hello", {"capabilities": 1, "version": 21306})
            node = sat.node
            await wait_until(lambda: "master" in node.connections, what="parent session")
            writer.transport.pause_reading()
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            payload = "x" * 900
            for i in range(count):
                agent.send("event::CheckResult",
                           check_result("agent1", f"svc{i}", f"{i} {payload}"))
            await wait_until(lambda: "agent1" in node.connections
                             and node.connections["agent1"].reading_paused,
                             what="the agent's reading held back")
            for _ in range(8):                    # 4 s: twice the liveness timeout
                master.send("event::Heartbeat", {"timeout": 120.0})
                await asyncio.sleep(0.5)
            assert "agent1" in node.connections, "the held-back agent was closed"
            assert "liveness" not in caplog.text
            writer.transport.resume_reading()
            await wait_until(lambda: len(master.messages("event::CheckResult")) == count,
                             timeout=60, what="every result at the parent")
            assert not agent.closed
            await agent.close()
            await master.close()
        finally:
            await sat.stop()

    run(main(), timeout=120)


def test_flooding_peers_take_turns_and_a_quiet_one_gets_through(tmp_path, run):
    """Peers sending flat out are read round-robin within a per-turn byte budget (here
    shrunk to 4 KiB so every turn hits it): nothing is lost, a quiet agent's result and
    the status endpoint are served while the flood goes on."""
    names = [f"flood{i}" for i in range(6)]
    pki = make_test_pki(tmp_path / "pki", ["master", "quiet", *names])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("quiet", ["quiet"], "master"),
                                       *((n, [n], "master") for n in names)])
    per_flooder = 1500

    async def main():
        master = await spec.start("master")
        master.node.reads.budget = 4096
        try:
            flooders = [await FakePeer.connect(spec.port("master"), pki, n,
                                               server_name="master") for n in names]
            quiet = await FakePeer.connect(spec.port("master"), pki, "quiet",
                                           server_name="master")
            payload = "x" * 900
            for i in range(per_flooder):
                for peer, name in zip(flooders, names):
                    peer.send("event::CheckResult",
                              check_result(name, f"svc{i}", f"{i} {payload}"))
            quiet.send("event::CheckResult", check_result("quiet", "ping", "PING OK"))

            async def quiet_stored():
                doc = await status_json(master, "/v1/objects/checkresults?host=quiet")
                return bool(doc["results"])
            await wait_until(quiet_stored, timeout=30, what="the quiet agent's result")
            total = per_flooder * len(names) + 1

            async def all_counted():
                return (await status_json(master))["totals"]["check_results"] == total
            await wait_until(all_counted, timeout=60, what="every flooded result")
            assert master.node.reads.deferred_turns > 0      # the budget was the limit
            text = await metrics_text(master)
            assert "router_read_deferred_turns_total " in text
            assert "router_read_waiting 0" in text
            for peer in (*flooders, quiet):
                assert not peer.closed
                await peer.close()
        finally:
            await master.stop()

    run(main(), timeout=120)
