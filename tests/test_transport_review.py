"""Transport after a review (2026-12-07): a session closed while its peer did not read
(a hung process, a TCP window stuck at zero) stayed registered for as long as that
lasted (a graceful close waits for the buffer to drain), and every reconnect of the
endpoint was refused as a duplicate. A liveness timeout now aborts the connection, and
any other close is aborted after ``CLOSE_GRACE``. Both tests fail on the old code."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import router.transport.connection as connection_module
from tests.nodeutil import ClusterSpec, FakePeer, check_result, client_ssl_context, wait_until
from tests.pkiutil import make_test_pki


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki", ["master", "sat1", "agent1"])


async def silent_parent(port: int, pki) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TLS as 'master', sends its Hello, then neither reads nor sends (a hung process)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=client_ssl_context(pki, "master"), server_hostname="sat1", limit=4096)
    from router.protocol import jsonrpc, netstring
    writer.write(netstring.encode(jsonrpc.notification("icinga::Hello",
                                                      {"capabilities": 1, "version": 21306})))
    await writer.drain()
    writer.transport.pause_reading()           # stops reading: the TCP window closes
    return reader, writer


async def six_megabytes_for_a_parent_that_does_not_read(spec, pki, node, *, heartbeats: bool
                                                         ) -> tuple[Any, FakePeer]:
    """The silent parent connects; agent1 sends ~6 MB of results for it (with heartbeats
    to keep its own session alive). The parent's writer and agent1."""
    _, parent_writer = await silent_parent(spec.port("sat1"), pki)
    await wait_until(lambda: "master" in node.connections, what="parent session")
    agent = await FakePeer.connect(spec.port("sat1"), pki, "agent1", server_name="sat1")
    big = "x" * 50_000
    for i in range(120):
        agent.send("event::CheckResult", check_result("agent1", f"s{i}", big))
        if i % 10 == 0:
            if heartbeats:
                agent.send("event::Heartbeat", {})
            await asyncio.sleep(0.02)
    return parent_writer, agent


def test_liveness_close_of_a_non_reading_peer_ends_the_session(tmp_path, pki, run):
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")],
                       timeouts="heartbeat_interval = 0.5\nliveness = 1.5\n")

    async def main():
        sat = await spec.start("sat1")
        node = sat.node
        try:
            pw, agent = await six_megabytes_for_a_parent_that_does_not_read(
                spec, pki, node, heartbeats=True)
            conn = node.connections["master"]
            await wait_until(lambda: conn.state != "open", timeout=10,
                             what="liveness timeout of the silent parent")
            assert conn.close_reason == "liveness timeout"
            await asyncio.sleep(6)
            state = conn.state
            # The parent comes back (a new process, a new connection): expected to be
            # accepted, since we gave up on the old session 6 s ago.
            again = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                           server_name="sat1")
            await asyncio.sleep(1.0)
            refused = again.closed
            still = node.connections.get("master") is conn
            pw.transport.abort()
            await again.close()
            await agent.close()
            assert (state, still, refused) == ("closed", False, False), \
                f"old session state={state}, still registered={still}, reconnect refused={refused}"
        finally:
            await sat.stop()

    run(main(), 60)


def test_a_graceful_close_of_a_non_reading_peer_ends_after_the_grace(tmp_path, pki, run,
                                                                     monkeypatch):
    monkeypatch.setattr(connection_module, "CLOSE_GRACE", 1.0)
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master"),
                                       ("agent1", ["agent1"], "sat")])

    async def main():
        sat = await spec.start("sat1")
        node = sat.node
        try:
            pw, agent = await six_megabytes_for_a_parent_that_does_not_read(
                spec, pki, node, heartbeats=False)
            conn = node.connections["master"]
            await wait_until(lambda: conn.transport is not None
                             and conn.transport.get_write_buffer_size() > 0,
                             what="output the parent does not read")
            conn.close("test: closing")                # graceful: waits for the buffer
            await wait_until(lambda: conn.state == "closed", timeout=5,
                             what="the close given up after CLOSE_GRACE")
            assert node.connections.get("master") is not conn
            pw.transport.abort()
            await agent.close()
        finally:
            await sat.stop()

    run(main(), 60)
