"""The node's TLS sessions (``router.tlslib``) on both libraries, in memory.

The node's side is a session from :func:`router.tlslib.contexts` (``bundled``: pyOpenSSL
on cryptography's OpenSSL; ``system``: Python's ``ssl``). The other side is what the node
meets in the field: an Icinga-like peer on Python's ``ssl`` (the distribution's OpenSSL,
as Debian's Icinga 2 uses), built without our own-file checks so that it can present bad
certificates, or another node. Every outcome must be the same on both libraries: the
identity, the failure token the node counts, the data.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from router.transport import tls, tlslib
from router.config import TLS_LIBRARIES
from router.errors import TLSSetupError

try:
    from tests.pkiutil import TestPKI, make_test_pki
    from tests.test_tls import intermediate_pki
except ImportError:  # tests/ is on sys.path but is not a package
    from pkiutil import TestPKI, make_test_pki
    from test_tls import intermediate_pki

LIBS = pytest.mark.parametrize("library", TLS_LIBRARIES)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return make_test_pki(tmp_path, ["server", "client"], other_ca_names=["stranger"],
                         expired_names=["old"], not_yet_valid_names=["early"])


def node(pki: TestPKI, library: str, name: str) -> tuple[tlslib.TLSLibrary, tlslib.TLSLibrary]:
    return tlslib.contexts(library, pki.ca_cert, pki.cert(name), pki.key(name))


def icinga_client(pki: TestPKI, name: str | None, *, max_version: ssl.TLSVersion | None = None
                  ) -> tlslib.TLSLibrary:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca_cert)
    if name is not None:
        ctx.load_cert_chain(pki.cert(name), pki.key(name))
    if max_version is not None:
        ctx.maximum_version = max_version
    return tlslib.SystemTLS(ctx, server_side=False)


def icinga_server(pki: TestPKI, name: str) -> tlslib.TLSLibrary:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert(name), pki.key(name))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(pki.ca_cert)
    return tlslib.SystemTLS(ctx, server_side=True)


class End:
    """One side of an in-memory session: handshake outcome and what it read."""

    def __init__(self, session: tlslib.TLSSession) -> None:
        self.session = session
        self.done = False
        self.error: BaseException | None = None
        self.received = b""
        self.eof = False

    def step(self) -> None:
        if self.done or self.error:
            return
        try:
            self.done = self.session.handshake()
        except ssl.SSLError as exc:
            self.error = exc

    def read_all(self) -> None:
        if self.error or not self.done:
            return
        try:
            while (chunk := self.session.read(65536)) is not None:
                if not chunk:
                    self.eof = True
                    return
                self.received += chunk
        except ssl.SSLError as exc:
            self.error = exc


def move(src: End, dst: End) -> bool:
    data = src.session.pull_output()
    if data:
        dst.session.feed(data)
    return bool(data)


def run(client_lib: tlslib.TLSLibrary, server_lib: tlslib.TLSLibrary,
        sni: str | None = "server") -> tuple[End, End]:
    """Handshake, then one message each way (a TLS 1.3 client learns that the server
    rejected its certificate only on its first read, as over the network)."""
    client, server = End(client_lib.session(sni)), End(server_lib.session())
    for _ in range(20):
        client.step()
        moved = move(client, server)
        server.step()
        moved = move(server, client) or moved
        if not moved and (client.done or client.error) and (server.done or server.error):
            break
    if client.done and not client.error:
        try:
            client.session.write(b"ping")
        except ssl.SSLError as exc:
            client.error = exc
        move(client, server)
        server.read_all()
        if server.received and not server.error:
            server.session.write(b"pong")
        move(server, client)
        client.read_all()
    return client, server


# -- both libraries, the node on either side ---------------------------------------------------

@LIBS
def test_node_accepts_icinga_agent(pki: TestPKI, library: str) -> None:
    server_lib, _ = node(pki, library, "server")
    client, server = run(icinga_client(pki, "client"), server_lib)
    assert client.done and server.done and not (client.error or server.error)
    assert (server.received, client.received) == (b"ping", b"pong")
    assert server.session.peer_identity() == "client"
    der = server.session.peer_certificate_der()
    assert x509.load_der_x509_certificate(der).subject.rfc4514_string() == "CN=client"


@LIBS
def test_node_dials_icinga_parent(pki: TestPKI, library: str) -> None:
    _, client_lib = node(pki, library, "client")
    client, server = run(client_lib, icinga_server(pki, "server"))
    assert client.done and server.done and not (client.error or server.error)
    assert client.session.peer_identity() == "server"
    assert server.session.peer_identity() == "client"
    assert client.received == b"pong"


@pytest.mark.parametrize(("dialler", "listener"), [("bundled", "bundled"),
                                                  ("bundled", "system"),
                                                  ("system", "bundled")])
def test_nodes_on_either_library_talk(pki: TestPKI, dialler: str, listener: str) -> None:
    _, client_lib = node(pki, dialler, "client")
    server_lib, _ = node(pki, listener, "server")
    client, server = run(client_lib, server_lib)
    assert (server.received, client.received) == (b"ping", b"pong")
    assert (client.session.peer_identity(), server.session.peer_identity()) == \
        ("server", "client")


@LIBS
def test_agent_without_certificate_is_anonymous(pki: TestPKI, library: str) -> None:
    server_lib, _ = node(pki, library, "server")
    client, server = run(icinga_client(pki, None), server_lib)
    assert server.done and not server.error
    assert (server.received, client.received) == (b"ping", b"pong")
    assert server.session.peer_identity() is None
    assert server.session.peer_certificate_der() is None


def test_self_signed_agent_is_anonymous_on_bundled(pki: TestPKI, tmp_path: Path) -> None:
    """What ``icinga2 pki request`` presents: a self-signed certificate, CN of a real
    endpoint. The bundled server lets it in without an identity (it may only enroll, as
    in Icinga) and keeps its certificate for the request; the system library cannot (no
    verify callback in Python's ssl) and fails the handshake."""
    from router import pki as pkimod

    key = pkimod.generate_key("ec")
    pkimod.write_private_key(tmp_path / "self.key", key)
    pkimod.write_certificate(tmp_path / "self.crt",
                             pkimod.self_signed_certificate(key, "client"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca_cert)
    ctx.load_cert_chain(tmp_path / "self.crt", tmp_path / "self.key")
    server_lib, _ = node(pki, "bundled", "server")
    client, server = run(tlslib.SystemTLS(ctx, server_side=False), server_lib)
    assert server.done and not server.error
    assert (server.received, client.received) == (b"ping", b"pong")
    assert server.session.peer_identity() is None
    der = server.session.peer_certificate_der()
    assert der is not None
    assert x509.load_der_x509_certificate(der).subject.rfc4514_string() == "CN=client"
    system_lib, _ = node(pki, "system", "server")
    _, refused = run(tlslib.SystemTLS(ctx, server_side=False), system_lib)
    assert isinstance(refused.error, ssl.SSLCertVerificationError)


@LIBS
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize(("name", "token"), [("stranger", "unknown_ca"), ("old", "cert_expired"),
                                             ("early", "cert_not_yet_valid")])
def test_bad_agent_certificate_is_refused_with_its_reason(pki: TestPKI, library: str,
                                                         version: ssl.TLSVersion, name: str,
                                                         token: str) -> None:
    server_lib, _ = node(pki, library, "server")
    client, server = run(icinga_client(pki, name, max_version=version), server_lib)
    assert isinstance(server.error, ssl.SSLCertVerificationError), server.error
    assert tls.classify_handshake_error(server.error) == token
    assert tls.describe_handshake_error(server.error).startswith("peer certificate rejected")
    assert server.received == b""
    # the agent hears an alert (OpenSSL has none for "not yet valid": bad_certificate)
    assert client.error is not None
    assert tls.classify_handshake_error(client.error) == (
        "bad_certificate" if token == "cert_not_yet_valid" else token)


@LIBS
@pytest.mark.parametrize(("name", "token"), [("stranger", "unknown_ca"), ("old", "cert_expired")])
def test_bad_parent_certificate_is_refused(pki: TestPKI, library: str, name: str,
                                           token: str) -> None:
    _, client_lib = node(pki, library, "client")
    client, server = run(client_lib, icinga_server(pki, name), sni=name)
    assert isinstance(client.error, ssl.SSLCertVerificationError), client.error
    assert tls.classify_handshake_error(client.error) == token
    assert tls.classify_handshake_error(server.error) == token


@LIBS
def test_plain_text_peer(pki: TestPKI, library: str) -> None:
    server_lib, _ = node(pki, library, "server")
    session = server_lib.session()
    session.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ssl.SSLError) as info:
        session.handshake()
    assert tls.classify_handshake_error(info.value) == "protocol_version"


@LIBS
def test_tls11_agent_refused(pki: TestPKI, library: str) -> None:
    server_lib, _ = node(pki, library, "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.warns(DeprecationWarning):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        with pytest.warns(DeprecationWarning):
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ssl.SSLError, ValueError) as exc:  # pragma: no cover
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 client: {exc}")
    client, server = run(tlslib.SystemTLS(ctx, server_side=False), server_lib)
    assert tls.classify_handshake_error(server.error) == "protocol_version"
    assert client.error is not None and not client.done


@LIBS
def test_no_shared_cipher(pki: TestPKI, library: str) -> None:
    server_lib, _ = node(pki, library, "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca_cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")        # CBC-SHA1: not in Icinga's list
    client, server = run(tlslib.SystemTLS(ctx, server_side=False), server_lib)
    assert tls.classify_handshake_error(server.error) == "no_shared_cipher"
    assert tls.classify_handshake_error(client.error) == "no_shared_cipher"


@LIBS
def test_close_notify_and_large_writes(pki: TestPKI, library: str) -> None:
    server_lib, client_lib = node(pki, library, "server")[0], node(pki, library, "client")[1]
    client, server = run(client_lib, server_lib)
    big = bytes(range(256)) * 4096                     # 1 MiB: many records
    taken = 0
    view = memoryview(big)
    while taken < len(big):
        taken += client.session.write(view[taken:])
    client.session.close_notify()
    move(client, server)
    server.read_all()
    assert server.received == b"ping" + big
    assert server.eof


@LIBS
def test_own_files_are_checked(pki: TestPKI, library: str) -> None:
    with pytest.raises(TLSSetupError, match="expired"):
        node(pki, library, "old")
    with pytest.raises(TLSSetupError, match="not signed by"):
        node(pki, library, "stranger")


def test_unknown_library(pki: TestPKI) -> None:
    with pytest.raises(ValueError, match="unknown TLS library"):
        node(pki, "gnutls", "server")


def test_bundled_server_sends_leaf_without_root_and_client_ca_list(pki: TestPKI) -> None:
    """Our certificate without the root CA (every peer has it), unlike Icinga and the
    system library (leaf + CA); like Icinga, the CA's name as the acceptable issuers."""

    def first_flight(server_lib: tlslib.TLSLibrary) -> bytes:
        client = icinga_client(pki, "client", max_version=ssl.TLSVersion.TLSv1_2).session("s")
        server = server_lib.session()
        assert not client.handshake()
        server.feed(client.pull_output())
        assert not server.handshake()
        return server.pull_output()                   # TLS 1.2: readable on the wire

    bundled = first_flight(node(pki, "bundled", "server")[0])
    system = first_flight(node(pki, "system", "server")[0])
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.cert("server").read_bytes())
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    assert leaf_der in bundled and leaf_der in system
    assert ca_der in system and ca_der not in bundled
    # CertificateRequest names the CA (DER of its subject) only on the bundled library
    subject = ca.subject.public_bytes()
    assert bundled.count(subject) == leaf_der.count(subject) + 1
    assert system.count(subject) == leaf_der.count(subject) + ca_der.count(subject)


@LIBS
def test_intermediate_goes_on_the_wire_root_only_in_the_peer_store(tmp_path: Path,
                                                                   library: str) -> None:
    """A node certificate issued by an intermediate CA: a peer that trusts only the root
    gets the intermediate from us on either library (the bundled one leaves out the
    root alone), and the handshake verifies both ways."""
    root_dir, root, inter, leaf = intermediate_pki(tmp_path)
    (tmp_path / "node.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                for c in (root, inter)))
    server = tlslib.contexts(library, bundle, tmp_path / "node.crt", tmp_path / "node.key")[0]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(root_dir / "ca.crt")                 # the root, nothing else
    client = tlslib.SystemTLS(ctx, server_side=False)
    c, s = run(client, server, sni="node")
    assert c.error is None and s.error is None, (c.error, s.error)
    assert c.session.peer_identity() == "node" and s.session.peer_identity() is None


def test_bundled_sessions_release_idle_buffers(pki: TestPKI) -> None:
    """SSL_MODE_RELEASE_BUFFERS, as Python's ssl sets it: thousands of idle sessions do
    not each keep 16 KiB record buffers."""
    from OpenSSL import SSL

    for side in node(pki, "bundled", "server"):
        mode = side.context.set_mode(0)                # ORs nothing in; returns the mode
        assert mode & SSL.MODE_RELEASE_BUFFERS


def test_verify_error_text_survives_a_moved_binding(monkeypatch) -> None:
    """The X509 error text comes from pyOpenSSL's private binding: if a later version
    moves it, a rejected certificate must still be reported, not crash the node."""
    import sys

    assert "expired" in tlslib._verify_error_text(10)
    monkeypatch.setitem(sys.modules, "OpenSSL._util", None)     # import now fails
    assert tlslib._verify_error_text(10) == "X509 verification error 10"
    exc = tlslib._verify_error(10)
    assert tls.classify_handshake_error(exc) == "cert_expired"


@pytest.mark.parametrize("probe", ["BIO length", "moved binding"])
def test_bundled_output_with_and_without_the_length_probe(pki: TestPKI, probe: str,
                                                          monkeypatch) -> None:
    """pull_output asks the outgoing BIO its length before reading it (the usual answer
    after a read is "nothing"); if a later pyOpenSSL moves that binding, it still works,
    learning "nothing" from WantReadError. Handshake, data both ways, close_notify, and
    a write larger than one pull_output chunk."""
    if probe == "moved binding":
        monkeypatch.setattr(tlslib, "_mem_bio_length", lambda: None)
    server_lib, client_lib = node(pki, "bundled", "server")
    assert (server_lib._output_length is None) == (probe == "moved binding")
    client, server = run(client_lib, server_lib)
    assert (server.received, client.received) == (b"ping", b"pong")
    assert server.session.pull_output() == b"" and client.session.pull_output() == b""
    big = bytes(range(256)) * 1024                      # 256 KiB: several 64 KiB pulls
    sent = 0
    while sent < len(big):
        sent += server.session.write(big[sent:])
    move(server, client)
    client.read_all()
    server.session.close_notify()
    move(server, client)
    client.read_all()
    assert client.received == b"pong" + big and client.eof


def test_bundled_session_is_freed_without_the_cyclic_gc(pki: TestPKI) -> None:
    """A closed session must not wait for the garbage collector: with 5 000 agents
    reconnecting, each one's OpenSSL state would linger until a collection."""
    import gc
    import weakref

    server_lib, _ = node(pki, "bundled", "server")
    _client, server = run(icinga_client(pki, "client"), server_lib)
    assert server.done
    ref = weakref.ref(server.session)
    gc.disable()
    try:
        server.session = None                          # type: ignore[assignment]
        del server
        assert ref() is None
    finally:
        gc.enable()
