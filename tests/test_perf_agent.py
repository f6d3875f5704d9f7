"""The emulated agent of ``router perf`` (perf/load.py) against a loopback TLS server.

Covers what the connect and storm numbers rest on: an agent counts as identified only
once the node has sent its first frame, a session the node closes is counted and
redialled, and the certificate chain an agent sends is exactly what an Icinga agent sends.
"""

from __future__ import annotations

import asyncio
import ctypes
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from perf.common import HELLO, SAT, agent_name, client_context, make_pki
from perf.load import (
    C_CLOSED_BY_PEER,
    C_CONNECT_FAILURES,
    C_CONNECTS,
    C_IDENTIFIED,
    N_COUNTERS,
    PerfAgent,
)
from router import pki as pkimod
from router.transport import tls


@pytest.fixture(scope="module")
def bench_pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("perfpki"), 2, shared_key=True)


def _client_certificate_message(client: ssl.SSLContext, server: ssl.SSLContext) -> bytes:
    """The client's Certificate handshake message, read off the wire.

    TLS 1.2, where that message travels in the clear (in 1.3 it is encrypted); the chain
    a client picks does not depend on the version.
    """
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(ci, co, server_side=False, server_hostname=SAT)
    s = server.wrap_bio(si, so, server_side=True)
    flights = []
    for _ in range(3):
        try:
            c.do_handshake()
        except ssl.SSLWantReadError:
            pass
        flights.append(co.read())
        si.write(flights[-1])
        try:
            s.do_handshake()
        except ssl.SSLWantReadError:
            pass
        ci.write(so.read())
    second = flights[1]     # Certificate, ClientKeyExchange, CertificateVerify, ...
    assert second[0] == 22 and second[5] == 11, "expected a Certificate message first"
    length = int.from_bytes(second[6:9], "big")
    return bytes(second[5:9 + length])


def test_agent_certificate_file_holds_the_chain_an_icinga_agent_sends(bench_pki,
                                                                      tmp_path: Path) -> None:
    name = agent_name(0)
    chain = pkimod.load_certificates(bench_pki.cert(name))
    ca = pkimod.load_certificates(bench_pki.ca_cert)[0]
    assert [c.subject for c in chain] == [chain[0].subject, ca.subject]
    # An Icinga agent names only its certificate; OpenSSL adds the CA from its store.
    leaf_only = tmp_path / "leaf.crt"
    pkimod.write_certificate(leaf_only, chain[0])
    key = bench_pki.out_dir / "agents.key"
    server = tls.server_context(bench_pki.ca_cert, bench_pki.cert(SAT), bench_pki.key(SAT))
    as_icinga = _client_certificate_message(
        client_context(bench_pki.ca_cert, leaf_only, key), server)
    as_perf = _client_certificate_message(
        client_context(bench_pki.ca_cert, bench_pki.cert(name), key), server)
    assert as_perf == as_icinga
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    assert all(der in as_perf for der in ders)


class _Node(asyncio.Protocol):
    """Accepts TLS, answers the agent's first bytes with a Hello unless told to stay mute."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.sessions.append(self)

    def data_received(self, data: bytes) -> None:
        self.server.received += len(data)
        if self.server.answer and self.transport is not None:
            self.transport.write(HELLO)


class _Server:
    def __init__(self) -> None:
        self.sessions: list[_Node] = []
        self.received = 0
        self.answer = True


async def _serve(bench_pki) -> tuple[asyncio.Server, _Server, int]:
    state = _Server()
    ctx = tls.server_context(bench_pki.ca_cert, bench_pki.cert(SAT), bench_pki.key(SAT))
    server = await asyncio.get_running_loop().create_server(
        lambda: _Node(state), "127.0.0.1", 0, ssl=ctx)
    return server, state, server.sockets[0].getsockname()[1]


def _agent(bench_pki, port: int, counter) -> PerfAgent:
    name = agent_name(0)
    ctx = client_context(bench_pki.ca_cert, bench_pki.cert(name),
                         bench_pki.out_dir / "agents.key")
    return PerfAgent(name, "127.0.0.1", port, ctx, b"", 1, counter, 65536)


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
def test_agent_is_identified_only_after_the_nodes_first_frame(bench_pki) -> None:
    async def main() -> None:
        server, state, port = await _serve(bench_pki)
        counter = (ctypes.c_longlong * N_COUNTERS)()
        state.answer = False
        agent = _agent(bench_pki, port, counter)
        await agent.connect(timeout=5)
        await _until(lambda: state.received >= len(HELLO))
        await asyncio.sleep(0.1)
        assert counter[C_CONNECTS] == 1 and counter[C_IDENTIFIED] == 0
        assert not agent.identified
        state.sessions[0].transport.write(HELLO)
        await _until(lambda: agent.identified)
        assert counter[C_IDENTIFIED] == 1
        await agent.close()
        assert agent.protocol is None and counter[C_IDENTIFIED] == 1
        server.close()
        await server.wait_closed()
    asyncio.run(main())


@pytest.mark.timeout(30)
def test_agent_counts_a_session_the_node_closes_and_dials_again(bench_pki) -> None:
    async def main() -> None:
        server, state, port = await _serve(bench_pki)
        counter = (ctypes.c_longlong * N_COUNTERS)()
        agent = _agent(bench_pki, port, counter)
        agent.auto_reconnect = True
        await agent.connect(timeout=5)
        await _until(lambda: agent.identified)
        state.sessions[0].transport.close()
        await _until(lambda: counter[C_CLOSED_BY_PEER] == 1)
        # redialled (storm behaviour) and identified again on a new session
        await _until(lambda: len(state.sessions) == 2 and agent.identified)
        assert counter[C_CONNECTS] == 2 and counter[C_IDENTIFIED] == 1
        agent.auto_reconnect = False
        await agent.close()
        server.close()
        await server.wait_closed()
    asyncio.run(main())


@pytest.mark.timeout(30)
def test_agent_counts_a_refused_dial_as_a_failure(bench_pki) -> None:
    async def main() -> None:
        server, _, port = await _serve(bench_pki)
        server.close()
        await server.wait_closed()
        counter = (ctypes.c_longlong * N_COUNTERS)()
        agent = _agent(bench_pki, port, counter)
        with pytest.raises(OSError):
            await agent.connect(timeout=5)
        assert counter[C_CONNECT_FAILURES] == 1 and counter[C_CONNECTS] == 0
        assert agent.protocol is None
    asyncio.run(main())


@pytest.mark.timeout(30)
def test_agent_rejected_by_the_node_is_never_identified(bench_pki, tmp_path: Path) -> None:
    """TLS 1.3: the agent's handshake completes before the node checks its certificate;
    the rejection arrives as an alert afterwards and must end the session, counted."""
    stranger = make_pki(tmp_path / "stranger", 1, shared_key=True)

    async def main() -> None:
        server, state, port = await _serve(bench_pki)
        counter = (ctypes.c_longlong * N_COUNTERS)()
        name = agent_name(0)
        ctx = client_context(bench_pki.ca_cert, stranger.cert(name),
                             stranger.out_dir / "agents.key")
        agent = PerfAgent(name, "127.0.0.1", port, ctx, b"", 1, counter, 0)
        try:
            await agent.connect(timeout=5)
        except (OSError, ssl.SSLError):
            assert counter[C_CONNECT_FAILURES] == 1
        else:
            await _until(lambda: counter[C_CLOSED_BY_PEER] == 1)
        assert not agent.identified and counter[C_IDENTIFIED] == 0
        assert agent.protocol is None and state.received == 0
        server.close()
        await server.wait_closed()
    asyncio.run(main())


@pytest.mark.timeout(30)
def test_agent_sends_until_stopped_and_waits_while_the_node_does_not_read(bench_pki) -> None:
    async def main() -> None:
        server, state, port = await _serve(bench_pki)
        counter = (ctypes.c_longlong * N_COUNTERS)()
        agent = _agent(bench_pki, port, counter)
        agent.template = b'{"ts":%b,"a":%b,"b":%b,"c":%b,"d":%b}'
        await agent.connect(timeout=5)
        await _until(lambda: agent.identified)
        node = state.sessions[0]
        node.transport.pause_reading()
        stop = asyncio.Event()
        task = asyncio.ensure_future(agent.run(stop, 0.0, 0.0))
        # flat out against a node that reads nothing: the agent stalls at its high-water
        # mark instead of buffering without bound (how soon depends on the machine's
        # load: until the count holds still for 0.3 s, within 10 s)
        deadline = asyncio.get_running_loop().time() + 10
        stalled = -1
        while agent.sent != stalled:
            stalled = agent.sent
            await asyncio.sleep(0.3)
            assert asyncio.get_running_loop().time() < deadline, \
                f"the agent kept sending to a node that reads nothing ({agent.sent} sent)"
        assert stalled > 0
        node.transport.resume_reading()
        await _until(lambda: agent.sent > stalled)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert counter[0] == agent.sent and not agent.errors
        await agent.close()
        server.close()
        await server.wait_closed()
    asyncio.run(main())


def test_handshake_benchmark_reports_every_variant(capsys) -> None:
    """perf/bench_handshake.py runs and reports each variant (numbers are not judged)."""
    from perf import bench_handshake
    assert bench_handshake.main(["--number", "3", "--repeat", "1", "--json"]) == 0
    out = __import__("json").loads(capsys.readouterr().out)
    assert set(out["results"]) == {"baseline", "bundled", "tls12", "p256-group", "no-client-cert",
                                   "client-leaf-only"}
    for r in out["results"].values():
        assert r["client_ms"] > 0 and r["server_ms"] > 0
    assert out["results"]["baseline"]["server_ratio"] == 1.0


def test_listening_reads_the_kernel_table() -> None:
    """The storm's 'port open' clock: a listening socket is seen, a closed one is not."""
    import socket
    import threading

    from perf.tool import listening, wait_listening
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, 0))
        except OSError:
            continue                    # no IPv6 here
        port = sock.getsockname()[1]
        if listening(port) is None:
            pytest.skip("no /proc/net/tcp on this platform")
        assert listening(port) is False          # bound, not listening
        sock.listen()
        assert listening(port) is True
        assert wait_listening(port, 1.0, threading.Event()) is not None
        sock.close()
        assert listening(port) is False
        assert wait_listening(port, 0.2, threading.Event()) is None
