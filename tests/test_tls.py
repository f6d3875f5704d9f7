"""TLS contexts, identity and handshake error tokens, with in-memory handshakes.

Each handshake runs two ``SSLObject``s over ``MemoryBIO`` pairs, pumping bytes between them
the way the transport does, so no socket or event loop is involved.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from router import pki as pkimod
from router.transport import tls
from router.errors import TLSSetupError

try:
    from tests.pkiutil import TestPKI, make_test_pki
except ImportError:  # tests/ is on sys.path but is not a package
    from pkiutil import TestPKI, make_test_pki


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])


# -- in-memory handshake ------------------------------------------------------------------

@dataclass
class Side:
    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    done: bool = False
    error: BaseException | None = None
    received: bytes = b""

    def step(self) -> None:
        if self.done or self.error:
            return
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            self.error = exc
            return
        self.done = True

    def read_all(self) -> None:
        if self.error:
            return
        try:
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    return
                self.received += chunk
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            self.error = exc


@dataclass
class Result:
    client: Side
    server: Side
    sni: list[str | None] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.client.done and self.server.done and not (
            self.client.error or self.server.error)


def _transfer(src: Side, dst: Side) -> bool:
    data = src.outgoing.read()
    if data:
        dst.incoming.write(data)
    return bool(data)


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
              server_hostname: str | None = "server", *, exchange: bool = True) -> Result:
    """Run a handshake in memory; then (optionally) send one message each way.

    The exchange matters for TLS 1.3: the client finishes its handshake before the server
    has looked at the client certificate, so a rejection only reaches the client on its
    next read, exactly as it would over the network.
    """
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda obj, name, ctx: sni.append(name)  # type: ignore[assignment]
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = Side(client_ctx.wrap_bio(c_in, c_out, server_side=False,
                                      server_hostname=server_hostname), c_in, c_out)
    server = Side(server_ctx.wrap_bio(s_in, s_out, server_side=True), s_in, s_out)
    for _ in range(50):
        client.step()
        moved = _transfer(client, server)
        server.step()
        moved = _transfer(server, client) or moved
        if not moved and (client.done or client.error) and (server.done or server.error):
            break
    else:  # pragma: no cover
        raise AssertionError("handshake did not converge")
    if exchange and client.done:
        # The server may already have failed: its alert is in flight to the client.
        for _ in range(5):
            if not client.error:
                try:
                    client.obj.write(b"ping")
                except ssl.SSLError as exc:
                    client.error = exc
            _transfer(client, server)
            if server.done:
                server.read_all()
                if server.received and not server.error:
                    server.obj.write(b"pong")
            _transfer(server, client)
            client.read_all()
            if client.received or client.error or server.error:
                break
    return Result(client, server, sni)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return make_test_pki(tmp_path, ["server", "client"], other_ca_names=["stranger"],
                         expired_names=["old"], not_yet_valid_names=["early"])


def ctx_pair(pki: TestPKI, client: str = "client", server: str = "server"
             ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return (tls.client_context(pki.ca_cert, pki.cert(client), pki.key(client)),
            tls.server_context(pki.ca_cert, pki.cert(server), pki.key(server)))


def _unchecked_client(pki: TestPKI, name: str | None) -> ssl.SSLContext:
    """A client context that loads any certificate (ours refuse broken own files)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca_cert)
    if name is not None:
        ctx.load_cert_chain(pki.cert(name), pki.key(name))
    return ctx


def _unchecked_server(pki: TestPKI, name: str, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert(name), pki.key(name))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(ca or pki.ca_cert)
    return ctx


# -- contexts -----------------------------------------------------------------------------

def test_context_settings(pki: TestPKI) -> None:
    client, server = ctx_pair(pki)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname is False
    for ctx in (client, server):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12 <= set(tls.ICINGA_CIPHERS.split(":"))
        assert "ECDHE-ECDSA-AES256-GCM-SHA384" in tls12
    assert server.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    # The CA file is what the server advertises as acceptable client CAs.
    assert [c["subject"] for c in server.get_ca_certs()] == [((("commonName", "Test CA main"),),)]


def test_icinga_cipher_list() -> None:
    names = tls.ICINGA_CIPHERS.split(":")
    assert len(names) == 14
    assert names[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert names[-1] == "AES128-GCM-SHA256"


# -- handshakes ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mutual_tls_identity_and_sni(pki: TestPKI, version: ssl.TLSVersion) -> None:
    client_ctx, server_ctx = ctx_pair(pki)
    client_ctx.maximum_version = version
    r = handshake(client_ctx, server_ctx, server_hostname="server")
    assert r.ok, (r.client.error, r.server.error)
    assert r.server.received == b"ping" and r.client.received == b"pong"
    assert r.client.obj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                      ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert tls.peer_identity(r.server.obj) == "client"
    assert tls.peer_identity(r.client.obj) == "server"
    assert r.sni == ["server"]
    der = tls.peer_certificate(r.server.obj)
    assert der == pkimod.load_certificates(pki.cert("client"))[0].public_bytes(
        serialization.Encoding.DER)


def test_rsa_keys_work(tmp_path: Path) -> None:
    p = make_test_pki(tmp_path, ["server", "client"], key_type="rsa")
    r = handshake(*ctx_pair(p), server_hostname="server")
    assert r.ok, (r.client.error, r.server.error)
    assert tls.peer_identity(r.server.obj) == "client"


def test_sni_is_endpoint_name_not_checked_against_cert(pki: TestPKI) -> None:
    # check_hostname is off: the CN comparison is the caller's job, after the handshake.
    r = handshake(*ctx_pair(pki), server_hostname="some-other-endpoint.example")
    assert r.ok
    assert r.sni == ["some-other-endpoint.example"]
    assert tls.peer_identity(r.client.obj) == "server"


def test_client_without_certificate_is_anonymous(pki: TestPKI) -> None:
    _, server_ctx = ctx_pair(pki)
    r = handshake(_unchecked_client(pki, None), server_ctx)
    assert r.ok, (r.client.error, r.server.error)
    assert r.server.received == b"ping"
    assert tls.peer_identity(r.server.obj) is None
    assert tls.peer_certificate(r.server.obj) is None
    assert tls.peer_identity(r.client.obj) == "server"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize(("client_name", "token"), [
    ("stranger", "unknown_ca"),
    ("old", "cert_expired"),
    ("early", "cert_not_yet_valid"),
])
def test_bad_client_certificate_fails_on_server(pki: TestPKI, client_name: str, token: str,
                                                version: ssl.TLSVersion) -> None:
    _, server_ctx = ctx_pair(pki)
    client_ctx = _unchecked_client(pki, client_name)
    client_ctx.maximum_version = version
    r = handshake(client_ctx, server_ctx)
    # CERT_OPTIONAL only tolerates a *missing* certificate: a presented bad one fails.
    assert isinstance(r.server.error, ssl.SSLCertVerificationError)
    assert tls.classify_handshake_error(r.server.error) == token
    assert tls.describe_handshake_error(r.server.error).startswith("peer certificate rejected")
    # The client learns it from the alert (TLS 1.3: only on its first read).
    assert r.client.error is not None
    client_token = tls.classify_handshake_error(r.client.error)
    # OpenSSL has no "not yet valid" alert, it sends bad_certificate.
    assert client_token == ("bad_certificate" if token == "cert_not_yet_valid" else token)
    assert r.server.received == b""


def test_server_certificate_from_other_ca(pki: TestPKI) -> None:
    client_ctx, _ = ctx_pair(pki)
    server_ctx = _unchecked_server(pki, "stranger")
    r = handshake(client_ctx, server_ctx, server_hostname="stranger")
    assert isinstance(r.client.error, ssl.SSLCertVerificationError)
    assert tls.classify_handshake_error(r.client.error) == "unknown_ca"
    assert tls.classify_handshake_error(r.server.error) == "unknown_ca"


def test_expired_server_certificate(pki: TestPKI) -> None:
    client_ctx, _ = ctx_pair(pki)
    r = handshake(client_ctx, _unchecked_server(pki, "old"), server_hostname="old")
    assert tls.classify_handshake_error(r.client.error) == "cert_expired"
    assert tls.classify_handshake_error(r.server.error) == "cert_expired"


def test_tls11_client_refused(pki: TestPKI) -> None:
    _, server_ctx = ctx_pair(pki)
    client_ctx = _unchecked_client(pki, "client")
    try:
        client_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")   # OpenSSL 3 needs level 0 for TLS 1.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            client_ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ssl.SSLError, ValueError) as exc:  # pragma: no cover
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 client: {exc}")
    r = handshake(client_ctx, server_ctx)
    assert r.server.error is not None
    assert tls.classify_handshake_error(r.server.error) == "protocol_version"
    assert r.client.error is not None
    assert tls.classify_handshake_error(r.client.error) == "protocol_version"


def test_no_shared_cipher(pki: TestPKI) -> None:
    _, server_ctx = ctx_pair(pki)
    client_ctx = _unchecked_client(pki, "client")
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")   # CBC-SHA1: not in Icinga's list
    r = handshake(client_ctx, server_ctx)
    assert tls.classify_handshake_error(r.server.error) == "no_shared_cipher"
    assert tls.classify_handshake_error(r.client.error) == "no_shared_cipher"


def test_eof_during_handshake(pki: TestPKI) -> None:
    _, server_ctx = ctx_pair(pki)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    s_in.write(b"\x16\x03\x01\x00")   # the start of a record, then the peer goes away
    s_in.write_eof()
    with pytest.raises(ssl.SSLError) as info:
        server.do_handshake()
    assert tls.classify_handshake_error(info.value) == "eof"
    assert "closed" in tls.describe_handshake_error(info.value)


def test_plain_text_client(pki: TestPKI) -> None:
    _, server_ctx = ctx_pair(pki)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    s_in.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ssl.SSLError) as info:
        server.do_handshake()
    assert tls.classify_handshake_error(info.value) == "protocol_version"


def test_other_ca_with_same_name_and_no_key_identifier(pki: TestPKI) -> None:
    # Icinga style: every CA is "Icinga CA" and leaves carry no authorityKeyIdentifier, so
    # OpenSSL finds *our* CA by name and then the signature check fails.
    ours = pkimod.load_certificates(pki.ca_cert)[0]
    twin_key = pkimod.generate_key()
    twin_ca = pkimod.ca_certificate(twin_key, common_name=ours.subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value)
    assert twin_ca.subject == ours.subject
    key = pkimod.generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("twin"))
            .issuer_name(twin_ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("twin")]), critical=False)
            .sign(twin_key, hashes.SHA256()))
    pkimod.write_certificate(pki.cert("twin"), cert)
    pkimod.write_private_key(pki.key("twin"), key)
    r = handshake(_unchecked_client(pki, "twin"), ctx_pair(pki)[1])
    assert r.server.error.verify_code == 7   # type: ignore[union-attr]
    assert tls.classify_handshake_error(r.server.error) == "unknown_ca"
    assert tls.classify_handshake_error(r.client.error) == "unknown_ca"
    with pytest.raises(TLSSetupError, match="not signed by the CA"):
        tls.client_context(pki.ca_cert, pki.cert("twin"), pki.key("twin"))


# -- classification of synthetic errors ---------------------------------------------------

def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    return exc


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] something")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(("exc", "token"), [
    (_verify_error(10, "certificate has expired"), "cert_expired"),
    (_verify_error(9, "certificate is not yet valid"), "cert_not_yet_valid"),
    (_verify_error(23, "certificate revoked"), "cert_revoked"),
    (_verify_error(20, "unable to get local issuer certificate"), "unknown_ca"),
    (_verify_error(18, "self-signed certificate"), "unknown_ca"),
    (_verify_error(19, "self-signed certificate in certificate chain"), "unknown_ca"),
    (_verify_error(7, "certificate signature failure"), "unknown_ca"),
    (_verify_error(26, "unsuitable certificate purpose"), "bad_certificate"),
    (_verify_error(999, "certificate has expired"), "cert_expired"),
    (_ssl_error("SSLV3_ALERT_CERTIFICATE_REVOKED"), "cert_revoked"),
    (_ssl_error("SSLV3_ALERT_BAD_CERTIFICATE"), "bad_certificate"),
    (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "unknown_ca"),
    (_ssl_error("NO_SHARED_CIPHER"), "no_shared_cipher"),
    (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol_version"),
    (_ssl_error("UNEXPECTED_EOF_WHILE_READING"), "eof"),
    (_ssl_error("SOMETHING_NEW"), "other"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "eof"),
    (ConnectionResetError(), "eof"),
    (TimeoutError(), "timeout"),
    (RuntimeError("boom"), "other"),
])
def test_classify(exc: BaseException, token: str) -> None:
    assert tls.classify_handshake_error(exc) == token
    assert token in tls.HANDSHAKE_ERROR_TOKENS
    assert isinstance(tls.describe_handshake_error(exc), str)


def test_describe_alert() -> None:
    text = tls.describe_handshake_error(_ssl_error("TLSV1_ALERT_UNKNOWN_CA"))
    assert text == "peer refused the handshake: alert 'unknown ca'"
    assert tls.describe_handshake_error(TimeoutError()) == "TLS handshake timed out"


# -- own files ----------------------------------------------------------------------------

@pytest.mark.parametrize("factory", [tls.server_context, tls.client_context])
def test_key_does_not_match_certificate(pki: TestPKI, tmp_path: Path, factory) -> None:
    other_key = tmp_path / "other.key"
    pkimod.write_private_key(other_key, pkimod.generate_key())
    with pytest.raises(TLSSetupError, match="does not match") as info:
        factory(pki.ca_cert, pki.cert("server"), other_key)
    assert str(other_key) in str(info.value)


@pytest.mark.parametrize("which", ["ca", "cert", "key"])
def test_missing_file(pki: TestPKI, tmp_path: Path, which: str) -> None:
    files = {"ca": pki.ca_cert, "cert": pki.cert("server"), "key": pki.key("server")}
    files[which] = tmp_path / "nope" / f"missing-{which}.pem"
    with pytest.raises(TLSSetupError, match="does not exist") as info:
        tls.server_context(files["ca"], files["cert"], files["key"])
    assert str(files[which]) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_key(pki: TestPKI) -> None:
    pki.key("server").chmod(0)
    with pytest.raises(TLSSetupError, match="not readable"):
        tls.server_context(pki.ca_cert, pki.cert("server"), pki.key("server"))


def test_directory_instead_of_file(pki: TestPKI, tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="cannot read") as info:
        tls.server_context(tmp_path, pki.cert("server"), pki.key("server"))
    assert str(tmp_path) in str(info.value)


def test_garbage_files(pki: TestPKI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(TLSSetupError, match="junk.pem"):
        tls.server_context(junk, pki.cert("server"), pki.key("server"))
    with pytest.raises(TLSSetupError, match="junk.pem"):
        tls.server_context(pki.ca_cert, junk, pki.key("server"))
    with pytest.raises(TLSSetupError, match="junk.pem.*not a PEM private key"):
        tls.server_context(pki.ca_cert, pki.cert("server"), junk)


def test_encrypted_key(pki: TestPKI, tmp_path: Path) -> None:
    key = pkimod.load_private_key(pki.key("server"))
    path = tmp_path / "enc.key"
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSSetupError, match="encrypted"):
        tls.server_context(pki.ca_cert, pki.cert("server"), path)


def test_own_certificate_expired(pki: TestPKI) -> None:
    with pytest.raises(TLSSetupError, match="expired, notAfter") as info:
        tls.server_context(pki.ca_cert, pki.cert("old"), pki.key("old"))
    assert str(pki.cert("old")) in str(info.value)


def test_own_certificate_not_signed_by_ca(pki: TestPKI) -> None:
    with pytest.raises(TLSSetupError, match="not signed by the CA") as info:
        tls.client_context(pki.ca_cert, pki.cert("stranger"), pki.key("stranger"))
    assert str(pki.cert("stranger")) in str(info.value)
    assert str(pki.ca_cert) in str(info.value)


def intermediate_pki(tmp_path: Path) -> tuple[Path, x509.Certificate, x509.Certificate,
                                               x509.Certificate]:
    """root CA (``root/ca.crt``) -> intermediate -> leaf "node" (key in ``node.key``);
    returns the root's directory and the three certificates."""
    root_dir = tmp_path / "root"
    pkimod.create_ca(root_dir)
    root_cert, root_key = pkimod.load_ca(root_dir)
    inter_key = pkimod.generate_key()
    inter = (x509.CertificateBuilder()
             .subject_name(_name("Intermediate"))
             .issuer_name(root_cert.subject).public_key(inter_key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
             .not_valid_after(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .sign(root_key, hashes.SHA256()))
    leaf, key = pkimod.issue_certificate(inter, inter_key, "node")
    pkimod.write_private_key(tmp_path / "node.key", key)
    return root_dir, root_cert, inter, leaf


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def test_chain_with_intermediate(tmp_path: Path) -> None:
    root_dir, _root, inter, leaf = intermediate_pki(tmp_path)
    chain = tmp_path / "node.crt"
    chain.write_bytes(_pem(leaf, inter))
    tls.check_own_files(root_dir / "ca.crt", chain, tmp_path / "node.key")
    # Without the intermediate in the file the leaf does not chain to the root.
    pkimod.write_certificate(chain, leaf)
    with pytest.raises(TLSSetupError, match="not signed"):
        tls.check_own_files(root_dir / "ca.crt", chain, tmp_path / "node.key")


# -- dates --------------------------------------------------------------------------------

def test_certificate_not_after_and_days_left(pki: TestPKI) -> None:
    path = pki.cert("server")
    cert = pkimod.load_certificates(path)[0]
    pem = path.read_text()
    assert tls.certificate_not_after(path) == cert.not_valid_after_utc
    assert tls.certificate_not_after(str(path)) == cert.not_valid_after_utc
    assert tls.certificate_not_after(pem) == cert.not_valid_after_utc
    assert tls.certificate_not_after(pem.encode()) == cert.not_valid_after_utc
    assert tls.certificate_not_after(cert.public_bytes(
        serialization.Encoding.DER)) == cert.not_valid_after_utc
    now = cert.not_valid_after_utc - dt.timedelta(days=10, hours=12)
    assert tls.certificate_days_left(path, now) == pytest.approx(10.5)
    assert tls.certificate_days_left(path, now.timestamp()) == pytest.approx(10.5)
    assert 396 < tls.certificate_days_left(path) <= 397.01
    assert tls.certificate_days_left(pki.cert("old")) < 0


def test_cert_is_current(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    pem = pki.cert("client").read_bytes()
    cert = pkimod.load_certificates(pki.cert("client"))[0]
    der = cert.public_bytes(serialization.Encoding.DER)
    assert tls.cert_is_current(pem, pki.ca_cert, now)
    assert tls.cert_is_current(pem.decode(), pki.ca_cert, now.timestamp())
    assert tls.cert_is_current(der, pki.ca_cert, now)
    # Within 30 days of notAfter: due for renewal.
    late = cert.not_valid_after_utc - dt.timedelta(days=29)
    assert not tls.cert_is_current(pem, pki.ca_cert, late)
    assert tls.cert_is_current(pem, pki.ca_cert, late - dt.timedelta(days=2))
    # Other CA, expired, garbage.
    assert not tls.cert_is_current(pki.cert("stranger").read_bytes(), pki.ca_cert, now)
    assert not tls.cert_is_current(pki.cert("old").read_bytes(), pki.ca_cert, now)
    assert not tls.cert_is_current(b"not a certificate", pki.ca_cert, now)


def test_cert_is_current_before_2017_forces_renewal(pki: TestPKI) -> None:
    ca_cert, ca_key = pkimod.load_ca(pki.directory)
    old_start = dt.datetime(2016, 6, 1, tzinfo=dt.timezone.utc)
    cert, _ = pkimod.issue_certificate(ca_cert, ca_key, "ancient", not_before=old_start,
                                       not_after=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))
    assert not tls.cert_is_current(cert, pki.ca_cert, dt.datetime.now(dt.timezone.utc))


# -- the chain we send ----------------------------------------------------------------------

def _first_flight(server_ctx: ssl.SSLContext, pki: TestPKI) -> int:
    """Bytes of the server's first handshake flight (it carries the certificate chain)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = _unchecked_client(pki, "client").wrap_bio(c_in, c_out, server_hostname="server")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    s_in.write(c_out.read())
    with pytest.raises(ssl.SSLWantReadError):
        server.do_handshake()
    return s_out.pending


def test_issuer_chain_is_spelled_out_as_openssl_would_build_it(pki: TestPKI,
                                                              tmp_path: Path) -> None:
    [issuer] = tls.issuer_chain(pki.ca_cert, pki.cert("server"))
    assert issuer == pkimod.load_certificates(pki.ca_cert, "CA")[0]
    chained = tmp_path / "chained.crt"
    chained.write_bytes(pki.cert("server").read_bytes() + pki.ca_cert.read_bytes())
    assert tls.issuer_chain(pki.ca_cert, chained) == []           # already a chain
    assert tls.issuer_chain(pki.other_ca_cert, pki.cert("server")) == []
    # On the wire: what OpenSSL sends when it builds the chain itself (leaf + CA), and
    # clearly more than the leaf alone (a server that cannot find the issuer).
    ours = _first_flight(tls.server_context(pki.ca_cert, pki.cert("server"),
                                            pki.key("server")), pki)
    built = _first_flight(_unchecked_server(pki, "server"), pki)
    leaf_only = _first_flight(_unchecked_server(pki, "server", ca=pki.other_ca_cert), pki)
    assert abs(ours - built) <= 4                  # ECDSA signatures vary by a byte or two
    assert ours > leaf_only + 200


def _chain_sent(ca: Path, cert: Path, **kwargs: bool) -> list[x509.Certificate]:
    with tls.chain_file(ca, cert, **kwargs) as path:
        return pkimod.load_certificates(path)


def test_chain_without_root_leaves_out_only_self_signed_certificates(
        pki: TestPKI, tmp_path: Path) -> None:
    """with_root=False (the bundled library): the peer has the root in its trust store;
    intermediates it may not have still go with our certificate."""
    [leaf] = pkimod.load_certificates(pki.cert("server"))
    [ca] = pkimod.load_certificates(pki.ca_cert)
    assert _chain_sent(pki.ca_cert, pki.cert("server")) == [leaf, ca]
    assert _chain_sent(pki.ca_cert, pki.cert("server"), with_root=False) == [leaf]
    chained = tmp_path / "chained.crt"                       # a file that holds the root
    chained.write_bytes(_pem(leaf, ca))
    assert _chain_sent(pki.ca_cert, chained, with_root=False) == [leaf]
    root_dir, root, inter, node = intermediate_pki(tmp_path / "inter")
    bundle = tmp_path / "bundle.crt"                         # root + intermediate as the CA
    bundle.write_bytes(_pem(root, inter))
    lone = tmp_path / "node.crt"
    lone.write_bytes(_pem(node))
    assert _chain_sent(bundle, lone) == [node, inter, root]
    assert _chain_sent(bundle, lone, with_root=False) == [node, inter]
    full = tmp_path / "full.crt"
    full.write_bytes(_pem(node, inter, root))
    assert _chain_sent(root_dir / "ca.crt", full, with_root=False) == [node, inter]
