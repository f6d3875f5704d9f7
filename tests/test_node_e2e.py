"""End-to-end over TLS on 127.0.0.1: scripted agents and parents around real router nodes."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.nodeutil import (ClusterSpec, FakePeer, check_result, http_get, metrics_text,
                            status_json, wait_until)
from tests.pkiutil import make_test_pki


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "sat2", "agent1", "agent2",
                                            "stranger"],
                         other_ca_names=["intruder"], expired_names=["agent-old"])


def master_with_agents(tmp_path, pki, **kw) -> ClusterSpec:
    return ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "master")], **kw)


async def agent_to_master(spec: ClusterSpec, pki, name: str = "agent1") -> FakePeer:
    """An agent session to ``master`` that has the master's Hello."""
    agent = await FakePeer.connect(spec.port("master"), pki, name, server_name="master")
    await wait_until(lambda: agent.messages("icinga::Hello"), what="master's hello")
    return agent


def test_agent_results_reach_master_view(tmp_path, pki, run):
    spec = master_with_agents(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        try:
            agent = await agent_to_master(spec, pki)
            agent.send("event::CheckResult", check_result("agent1", "disk", "DISK OK"),
                       ts=1700000000.5)
            agent.send("event::CheckResult", check_result("agent1", None, "PING OK"),
                       ts=1700000001.0)

            async def two_results():
                doc = await status_json(master, "/v1/objects/checkresults")
                return len(doc["results"]) == 2
            await wait_until(two_results, what="two stored results")
            doc = await status_json(master, "/v1/objects/checkresults?host=agent1&service=disk")
            [result] = doc["results"]
            assert result["output"] == "DISK OK" and result["received_from"] == "agent1"
            status = await status_json(master)
            ep = {e["name"]: e for e in status["endpoints"]}
            assert ep["agent1"]["connected"] and ep["agent1"]["direction"] == "inbound"
            assert ep["agent1"]["icinga_version"] == 21306
            assert ep["agent1"]["messages_received"] == 2
            assert not ep["agent2"]["connected"]
            assert status["totals"]["check_results"] == 2
            traffic = master.node.traffic    # the node's totals, counted beside the endpoints'
            assert traffic.msgs_in >= 2 and traffic.bytes_in > 0 and traffic.bytes_out > 0
            assert status["node"]["role"] == "master"
            assert {z["name"]: z["relation"] for z in status["zones"]} == {
                "master": "local", "agent1": "child", "agent2": "child"}
            # ?sections= and ?endpoint=: what a frequent poller asks for instead of it all.
            part = await status_json(master, "/v1/status?sections=connections,totals")
            assert list(part) == ["connections", "totals"]
            assert part["connections"]["established"] == 1
            part = await status_json(master, "/v1/status?sections=endpoints&endpoint=agent1")
            assert [e["name"] for e in part["endpoints"]] == ["agent1"]
            part = await status_json(master, "/v1/status?sections=endpoints&endpoint=nobody")
            assert part == {"endpoints": []}
            code, body = await asyncio.to_thread(http_get, master.status_port,
                                                 "/v1/status?sections=connections,bogus")
            assert code == 400 and b"unknown section 'bogus'" in body
            text = await metrics_text(master)
            assert ('router_messages_received_total{endpoint="agent1",'
                    'method="event::CheckResult"} 2') in text
            assert 'router_peer_connected{endpoint="agent1",relation="child",zone="agent1"} 1.0' \
                in text
            assert 'router_connections{state="established"} 1' in text
            # one handshake seen, its size counted both ways (hello, chain, finish)
            assert "router_tls_handshake_received_bytes_count 1.0" in text
            assert "router_tls_handshake_sent_bytes_count 1.0" in text
            received = [line for line in text.splitlines()
                        if line.startswith("router_tls_handshake_received_bytes_sum ")]
            assert received and float(received[0].split()[1]) > 500, received
            await agent.close()
            await wait_until(lambda: "agent1" not in master.node.connections,
                             what="agent1 gone")
            zones = {z["name"]: z for z in (await status_json(master))["zones"]}
            # Icinga's zone lag: now minus the newest ts from a disconnected endpoint.
            assert zones["agent1"]["log_lag"] > 0 and not zones["agent1"]["connected"]
            assert zones["agent2"]["log_lag"] == 0
        finally:
            await master.stop()

    run(main())


def test_satellite_relays_agent_results_to_parent_with_fresh_ts(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")])

    async def main():
        sat = await spec.start("sat1")
        try:
            parent = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            # An agent whose clock is far behind: the satellite must re-stamp ts.
            for i in range(3):
                agent.send("event::CheckResult", check_result("agent1", "load", f"LOAD {i}"),
                           ts=1000.0 + i)
            await wait_until(lambda: len(parent.messages("event::CheckResult")) == 3,
                             what="results at the parent")
            got = parent.messages("event::CheckResult")
            assert [m["params"]["cr"]["output"] for m in got] == ["LOAD 0", "LOAD 1", "LOAD 2"]
            stamps = [m["ts"] for m in got]
            assert stamps == sorted(stamps) and stamps[0] > 1.6e9
            assert all(m["originZone"] == "agent1" for m in got)
            # Nothing flows back to the agent.
            assert not agent.messages("event::CheckResult")
            await agent.close()
            await parent.close()
        finally:
            await sat.stop()

    run(main())


@pytest.mark.parametrize(("master_lib", "sat_lib"), [("system", "bundled"),
                                                    ("bundled", "system")])
def test_nodes_on_different_tls_libraries(tmp_path, pki, run, master_lib, sat_lib):
    """A satellite dials its master, each on its own ``[tls] library``; an agent's result
    crosses both and the identities are the certificate CNs."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       dialled={"master"}, libraries={"master": master_lib, "sat1": sat_lib})

    async def main():
        master = await spec.start("master")
        sat = await spec.start("sat1")
        try:
            assert (master.node.server_context.name, sat.node.client_context.name) == \
                (master_lib, sat_lib)
            await wait_until(lambda: "sat1" in master.node.connections, what="sat1 at master")
            conn = master.node.connections["sat1"]
            assert conn.identity == "sat1" and conn.direction == "inbound"
            assert sat.node.connections["master"].identity == "master"
            agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1",
                                           server_name="sat1")
            agent.send("event::CheckResult", check_result("agent1", "disk", "DISK OK"))

            async def arrived():
                doc = await status_json(master, "/v1/objects/checkresults")
                return [r["output"] for r in doc["results"]] == ["DISK OK"]
            await wait_until(arrived, what="the result at the master")
            await agent.close()
        finally:
            await sat.stop()
            await master.stop()

    run(main())


def test_refused_messages_keep_the_connection(tmp_path, pki, run):
    spec = master_with_agents(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        try:
            agent = await FakePeer.connect(spec.port("master"), pki, "agent1",
                                           server_name="master")
            other = await FakePeer.connect(spec.port("master"), pki, "agent2",
                                           server_name="master")
            # Wrong direction: a child may not push config down.
            agent.send("config::UpdateObject", {"name": "x", "type": "Host", "version": 1,
                                                "zone": "master", "config": "object Host"})
            agent.send("event::NoSuchMethod", {"a": 1})
            # About another zone's object.
            agent.send("event::CheckResult", check_result("agent2", "disk", "spoofed"))
            other.send("event::CheckResult", check_result("agent2", "disk", "real"))
            agent.send("event::CheckResult", check_result("agent1", "disk", "after refusals"))

            async def settled():
                doc = await status_json(master, "/v1/objects/checkresults")
                return len(doc["results"]) == 2
            await wait_until(settled, what="both genuine results")
            doc = await status_json(master, "/v1/objects/checkresults")
            outputs = {(r["host"], r["service"]): r["output"] for r in doc["results"]}
            assert outputs == {("agent1", "disk"): "after refusals", ("agent2", "disk"): "real"}
            text = await metrics_text(master)
            for method, reason in (("config::UpdateObject", "not_allowed"),
                                   ("other", "unknown_method"),  # no new series per name
                                   ("event::CheckResult", "wrong_zone")):
                assert (f'router_messages_refused_total{{endpoint="agent1",method="{method}",'
                        f'reason="{reason}"}} 1') in text, (method, reason)
            assert "NoSuchMethod" not in text
            assert not agent.closed
            await agent.close()
            await other.close()
        finally:
            await master.stop()

    run(main())


def test_log_position_confirmed_once_per_change(tmp_path, pki, run):
    """log::SetLogPosition tells a peer the newest ts we have from it (so it replays only
    what we lack after a reconnect); it is repeated only when that position moved."""
    spec = master_with_agents(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        master.node.log_position_interval = 0.2
        try:
            agent = await agent_to_master(spec, pki)
            agent.send("event::CheckResult", check_result("agent1", "disk", "DISK OK"),
                       ts=1700000000.5)

            def positions():
                return [m["params"]["log_position"]
                        for m in agent.messages("log::SetLogPosition")]
            await wait_until(lambda: positions() == [1700000000.5], what="first confirmation")
            await asyncio.sleep(1.0)            # five intervals: the position did not move
            assert positions() == [1700000000.5]
            agent.send("event::CheckResult", check_result("agent1", "disk", "DISK WARN"),
                       ts=1700000002.0)
            await wait_until(lambda: positions() == [1700000000.5, 1700000002.0],
                             what="second confirmation")
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_sessions_send_without_nagle_delay(tmp_path, pki, run):
    """Small frames (heartbeats, one CheckResult) must leave at once: every session's socket
    has TCP_NODELAY, which the event loop sets for TCP transports (the node relies on it)."""
    spec = master_with_agents(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        try:
            agent = await agent_to_master(spec, pki)
            await wait_until(lambda: "agent1" in master.node.connections, what="agent1 up")
            sock = master.node.connections["agent1"].transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_agent_sessions_get_a_small_kernel_receive_buffer(tmp_path, pki, run):
    """An agent's session (a child zone without children) gets ``SO_RCVBUF`` =
    ``limits.agent_receive_buffer``: a held-back agent's unread input waits in the kernel,
    and at the 128 KiB default 10 000 of them pushed the host's TCP memory into pressure
    (issue 22). A satellite's session (its zone has children) keeps the kernel's
    autotuning, which its throughput needs on a long link."""
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat1", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "master"),
                                       ("agent2", ["agent2"], "sat1")])

    async def main():
        master = await spec.start("master", listen=True,
                                  extra="[limits]\nagent_receive_buffer = \"24KiB\"\n")
        try:
            agent = await agent_to_master(spec, pki)
            sat = await FakePeer.connect(spec.port("master"), pki, "sat1", server_name="master")
            connections = master.node.connections
            await wait_until(lambda: "agent1" in connections and "sat1" in connections,
                             what="agent1 and sat1 up")

            def rcvbuf(name: str) -> int:
                sock = connections[name].transport.get_extra_info("socket")
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            assert rcvbuf("agent1") == 2 * 24 * 1024      # Linux doubles what is set
            assert rcvbuf("sat1") != 2 * 24 * 1024
            await agent.close()
            await sat.close()
        finally:
            await master.stop()

    run(main())


def test_an_inbound_connection_gets_its_tls_session_with_its_first_whole_record(
        tmp_path, pki, run):
    """An accepted connection waits in the listener's lobby (a socket and a small entry:
    no transport, no connection, no TLS session, no handshake slot) until its first TLS
    record is whole, so 10 000 connections that never send, or send a record header and
    stall (issue 21's floods), cost none of those; the whole record makes it a connection
    with the bytes read so far, and the handshake goes on as usual."""
    spec = master_with_agents(tmp_path, pki)

    async def main():
        master = await spec.start("master")
        node = master.node
        lobby = node.listener.lobby
        try:
            accepted = node.admission.admitted
            _, writer = await asyncio.open_connection("127.0.0.1", spec.port("master"))
            await wait_until(lambda: len(lobby) == 1, what="the idle connection accepted")
            [idle] = list(lobby._entries)
            assert not node.all_connections and node.admission.pending == 1
            assert node.admission.admitted == accepted + 1
            agent = await agent_to_master(spec, pki)        # handshakes as before
            agent.send("event::CheckResult", check_result("agent1", "disk", "DISK OK"),
                       ts=1700000000.5)
            await wait_until(lambda: node.traffic.msgs_in >= 1, what="the result")
            assert len(lobby) == 1 and len(node.all_connections) == 1   # the agent's
            writer.write(b"\x16\x03\x01\x02")          # a record header begun
            await wait_until(lambda: idle.handshake_bytes_in == 4, what="the bytes read")
            writer.write(b"\x00" + b"\x01" * 100)     # a 512-byte record, 100 bytes of it
            await wait_until(lambda: idle.handshake_bytes_in == 105, what="the bytes read")
            assert len(lobby) == 1 and node.admission.handshaking == 0
            writer.write(b"\x01" * 412)                # whole: a session, then OpenSSL's
            await wait_until(lambda: node.handshake_failures.total() == 1,
                             what="the garbage refused")
            assert len(lobby) == 0 and lobby.handed_over == 2     # the agent's too
            # counted once as accepted, whether it waited in the lobby or not
            assert node.admission.admitted == accepted + 2
            await wait_until(lambda: len(node.all_connections) == 1, what="it closed")
            writer.close()
            await agent.close()
        finally:
            await master.stop()

    run(main())


def test_handshake_end_and_hello_leave_in_one_write(tmp_path, pki, run, monkeypatch):
    """The last handshake step's output (here the bundled library's session tickets) is
    not sent on its own: it goes out with our Hello, one send per handshake fewer."""
    from router.transport import tlslib

    outputs: dict[int, list[int]] = {}
    original = tlslib._BundledSession.pull_output

    def recording(self):
        out = original(self)
        if out:
            outputs.setdefault(id(self), []).append(len(out))
        return out
    monkeypatch.setattr(tlslib._BundledSession, "pull_output", recording)
    spec = master_with_agents(tmp_path, pki, libraries={"master": "bundled"})

    async def main():
        master = await spec.start("master")
        assert master.node.server_context.name == "bundled"
        try:
            agent = await agent_to_master(spec, pki)
            # server flight; then tickets + Hello together (not tickets, then Hello)
            [sizes] = outputs.values()
            assert len(sizes) == 2, sizes
            await agent.close()
        finally:
            await master.stop()

    run(main())


async def _agent1_reading(spec, pki):
    """The master, agent1's client, and agent1's session on the master once it reads."""
    master = await spec.start("master")
    try:
        agent = await agent_to_master(spec, pki)
        conn = master.node.connections["agent1"]
        await wait_until(lambda: conn.state == "open" and not conn.parked,
                         what="agent1 reading")
    except BaseException:
        await master.stop()
        raise
    return master, agent, conn


def test_read_stall_watchdog_ignores_input_read_between_checks(tmp_path, pki, run):
    """Input seen waiting at one check but read before the next is a busy loop, not a
    lost wake-up: under load thousands of idle agents' first results arrive at once
    and the loop reaches them within the turn (the first watchdog flagged 387 such
    sessions in one `router perf --endpoints 10000` run, all read within 0.2 s)."""
    spec = master_with_agents(tmp_path, pki)

    async def main():
        master, agent, conn = await _agent1_reading(spec, pki)
        node = master.node
        try:
            for n, when in ((1, 10), (2, 15)):
                conn.transport.pause_reading()      # the loop "has not reached it yet"
                agent.send("event::CheckResult", check_result("agent1", "disk", "DISK OK"))
                await wait_until(lambda: conn.unread_bytes() > 0, what="input in the kernel")
                node._check_read_stalls(node.loop.time() + when)
                conn.transport.resume_reading()
                await wait_until(lambda: node.check_results_received == n,
                                 what=f"result {n}")
                await wait_until(lambda: not conn.parked, what="agent1 reading")
            assert node.read_stalls == 0
            await agent.close()
        finally:
            await master.stop()

    run(main())


@pytest.mark.parametrize("library", ["system", "bundled"])
def test_read_stall_watchdog_makes_a_stuck_session_read(tmp_path, pki, run, caplog, library):
    """A session whose transport stopped reading behind the node's back (a lost wake-up)
    while input waits in the kernel is found, logged with its state, counted, and read."""
    spec = master_with_agents(tmp_path, pki, libraries={"master": library})

    async def main():
        master, agent, conn = await _agent1_reading(spec, pki)
        node = master.node
        try:
            conn.transport.pause_reading()          # what the bookkeeping does not know
            agent.send("event::CheckResult", check_result("agent1", "disk", "DISK OK"))
            await wait_until(lambda: conn.unread_bytes() > 0, what="input in the kernel")
            await asyncio.sleep(0.3)
            assert node.check_results_received == 0
            node._check_read_stalls(node.loop.time())  # too early: nothing flagged
            assert node.read_stalls == 0
            node._check_read_stalls(node.loop.time() + 10)   # first sighting: maybe load
            assert node.read_stalls == 0
            await asyncio.sleep(0.2)
            assert node.check_results_received == 0
            node._check_read_stalls(node.loop.time() + 15)   # still unread, no read since
            assert node.read_stalls == 1
            await wait_until(lambda: node.check_results_received == 1, what="the result")
            assert "bytes unread for" in caplog.text and "agent1" in caplog.text
            assert "router_read_stalls_total 1" in await metrics_text(master)
            node._check_read_stalls(node.loop.time() + 20)   # read: nothing left
            node._check_read_stalls(node.loop.time() + 25)
            assert node.read_stalls == 1
            await agent.close()
        finally:
            await master.stop()

    run(main())
