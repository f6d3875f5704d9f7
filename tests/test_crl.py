"""Certificate revocation at the handshake (``[tls] crl_file``, issue 16 item 8).

A CRL written by ``router ca revoke`` (:func:`router.pki.revoke`) and named in
``[tls] crl_file`` is checked for the peer's certificate on every handshake, by both TLS
libraries, as server and as client; it is validated when the configuration loads and
picked up (or refused) on reload.
"""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from router import pki as pkimod
from router.config import TLS_LIBRARIES, config_to_toml, load_config, parse_config
from router.errors import ConfigError, TLSSetupError
from router.transport import tls, tlslib

from tests.nodeutil import ClusterSpec, FakePeer, metrics_text, wait_until
from tests.pkiutil import TestPKI, make_test_pki
from tests.test_reload import connect
from tests.test_tlslib import icinga_client, icinga_server
from tests.test_tlslib import run as handshake

LIBS = pytest.mark.parametrize("library", TLS_LIBRARIES)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return make_test_pki(tmp_path, ["server", "client", "good", "bad"],
                         other_ca_names=["stranger"])


def _ca(pki: TestPKI) -> tuple[x509.Certificate, pkimod.PrivateKey]:
    return (pkimod.load_certificates(pki.ca_cert)[0],
            pkimod.load_private_key(pki.ca_key))


def revoke(pki: TestPKI, *names: str, path: Path | None = None) -> Path:
    """A CRL of our CA revoking ``names`` (what ``router ca revoke`` writes)."""
    ca_cert, ca_key = _ca(pki)
    path = path or pki.directory / "ca.crl"
    return pkimod.revoke(ca_cert, ca_key, path,
                         [pkimod.load_certificates(pki.cert(n))[0] for n in names])


def node(pki: TestPKI, library: str, name: str, crl: Path | None
         ) -> tuple[tlslib.TLSLibrary, tlslib.TLSLibrary]:
    return tlslib.contexts(library, pki.ca_cert, pki.cert(name), pki.key(name), crl)


# -- the handshake -------------------------------------------------------------------------

@LIBS
def test_revoked_client_refused_unrevoked_accepted(pki: TestPKI, library: str) -> None:
    crl = revoke(pki, "bad")
    server_lib, _ = node(pki, library, "server", crl)
    client, server = handshake(icinga_client(pki, "good"), server_lib)
    assert not (client.error or server.error)
    assert server.session.peer_identity() == "good"
    client, server = handshake(icinga_client(pki, "bad"), server_lib)
    assert isinstance(server.error, ssl.SSLCertVerificationError)
    assert tls.classify_handshake_error(server.error) == "cert_revoked"
    assert "revoked" in tls.describe_handshake_error(server.error)
    # The revoked peer is told why (alert certificate_revoked).
    assert client.error is not None
    assert tls.classify_handshake_error(client.error) == "cert_revoked"


@LIBS
def test_revoked_server_refused_by_dialling_node(pki: TestPKI, library: str) -> None:
    crl = revoke(pki, "server")
    _, client_lib = node(pki, library, "client", crl)
    client, server = handshake(client_lib, icinga_server(pki, "server"))
    assert isinstance(client.error, ssl.SSLCertVerificationError)
    assert tls.classify_handshake_error(client.error) == "cert_revoked"
    assert server.error is not None
    assert tls.classify_handshake_error(server.error) == "cert_revoked"
    # The same node dials an unrevoked server.
    client, server = handshake(client_lib, icinga_server(pki, "good"), sni="good")
    assert not (client.error or server.error)
    assert client.session.peer_identity() == "good"


@pytest.mark.parametrize(("dialler", "listener"), [("bundled", "system"),
                                                  ("system", "bundled")])
def test_revoked_node_between_nodes(pki: TestPKI, dialler: str, listener: str) -> None:
    crl = revoke(pki, "bad")
    _, client_lib = node(pki, dialler, "bad", crl)
    server_lib, _ = node(pki, listener, "server", crl)
    client, server = handshake(client_lib, server_lib)
    assert server.error is not None and client.error is not None
    assert tls.classify_handshake_error(server.error) == "cert_revoked"


@LIBS
def test_no_crl_no_check(pki: TestPKI, library: str) -> None:
    revoke(pki, "bad")
    server_lib, _ = node(pki, library, "server", None)
    client, server = handshake(icinga_client(pki, "bad"), server_lib)
    assert not (client.error or server.error)


@LIBS
def test_empty_crl_admits_everyone_of_our_ca(pki: TestPKI, library: str) -> None:
    ca_cert, ca_key = _ca(pki)
    crl = pkimod.revoke(ca_cert, ca_key, pki.directory / "empty.crl", [])
    server_lib, _ = node(pki, library, "server", crl)
    client, server = handshake(icinga_client(pki, "bad"), server_lib)
    assert not (client.error or server.error)
    assert server.session.peer_identity() == "bad"
    client, server = handshake(icinga_client(pki, None), server_lib)
    assert not (client.error or server.error)
    assert server.session.peer_identity() is None


def test_self_signed_agent_still_anonymous_on_bundled_with_crl(pki: TestPKI,
                                                               tmp_path: Path) -> None:
    """Enrollment keeps working with a CRL: OpenSSL finds no CRL for a self-signed
    certificate's own issuer, which must not fail the handshake either."""
    key = pkimod.generate_key("ec")
    pkimod.write_private_key(tmp_path / "self.key", key)
    pkimod.write_certificate(tmp_path / "self.crt", pkimod.self_signed_certificate(key, "bad"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca_cert)
    ctx.load_cert_chain(tmp_path / "self.crt", tmp_path / "self.key")
    server_lib, _ = node(pki, "bundled", "server", revoke(pki, "bad"))
    client, server = handshake(tlslib.SystemTLS(ctx, server_side=False), server_lib)
    assert server.done and not server.error
    assert (server.received, client.received) == (b"ping", b"pong")
    assert server.session.peer_identity() is None


@LIBS
def test_other_ca_still_unknown_ca_with_crl(pki: TestPKI, library: str) -> None:
    server_lib, _ = node(pki, library, "server", revoke(pki, "bad"))
    client, server = handshake(icinga_client(pki, "stranger"), server_lib)
    assert server.error is not None
    assert tls.classify_handshake_error(server.error) == "unknown_ca"


# -- a CRL that cannot be used -------------------------------------------------------------

def _foreign_crl(tmp_path: Path) -> Path:
    key = pkimod.generate_key("ec")
    ca = pkimod.ca_certificate(key, common_name="Somebody Else's CA", days=30)
    return pkimod.revoke(ca, key, tmp_path / "foreign.crl", [])


def _expired_crl(pki: TestPKI) -> Path:
    ca_cert, ca_key = _ca(pki)
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - dt.timedelta(days=10))
           .next_update(now - dt.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    path = pki.directory / "expired.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def bad_crls(pki: TestPKI) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error says)."""
    d = pki.directory
    (d / "junk.crl").write_text("not a CRL\n")
    good = revoke(pki, "bad", path=d / "der-source.crl")
    der = x509.load_pem_x509_crl(good.read_bytes()).public_bytes(serialization.Encoding.DER)
    (d / "der.crl").write_bytes(der)
    return {"missing": (d / "nope.crl", "does not exist"),
            "junk": (d / "junk.crl", "not a CRL"),
            "der": (d / "der.crl", "must be PEM"),
            "foreign": (_foreign_crl(d), "not signed by the CA"),
            "expired": (_expired_crl(pki), "CRL expired")}


@LIBS
def test_unusable_crl_refused_when_building_contexts(pki: TestPKI, library: str) -> None:
    for path, text in bad_crls(pki).values():
        with pytest.raises(TLSSetupError, match=text) as info:
            node(pki, library, "server", path)
        assert str(path) in str(info.value)


# -- the configuration ---------------------------------------------------------------------

def _toml(pki: TestPKI, data_dir: Path, crl: Path | None) -> str:
    lines = ['[node]', 'name = "server"', f'data_dir = "{data_dir}"', '[tls]',
             f'ca = "{pki.ca_cert}"', f'cert = "{pki.cert("server")}"',
             f'key = "{pki.key("server")}"']
    if crl is not None:
        lines.append(f'crl_file = "{crl}"')          # line 8
    lines += ['[[zones]]', 'name = "master"', 'endpoints = ["server"]',
              '[[endpoints]]', 'name = "server"']
    return "\n".join(lines) + "\n"


def test_config_crl_file_loads_and_round_trips(pki: TestPKI, tmp_path: Path) -> None:
    crl = revoke(pki, "bad")
    path = tmp_path / "router.toml"
    path.write_text(_toml(pki, tmp_path / "data", crl))
    cfg = parse_config(path.read_text(), str(path))
    assert cfg.tls.crl_file == str(crl)
    emitted = config_to_toml(cfg)
    assert f"crl_file = \"{crl}\"" in emitted
    assert parse_config(emitted, str(path)).tls == cfg.tls
    assert parse_config(_toml(pki, tmp_path / "data", None), str(path)).tls.crl_file is None
    relative = _toml(pki, tmp_path / "data", None).replace(
        "[[zones]]", 'crl_file = "ca.crl"\n[[zones]]', 1)
    assert parse_config(relative, str(pki.directory / "r.toml")).tls.crl_file == str(crl)


def test_config_refuses_unusable_crl_naming_the_line(pki: TestPKI, tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    for name, (crl, text) in bad_crls(pki).items():
        with pytest.raises(ConfigError, match=text) as info:
            parse_config(_toml(pki, tmp_path / "data", crl), str(path))
        assert (info.value.line, info.value.key) == (8, "tls.crl_file"), name
        assert str(crl) in str(info.value)


def test_config_check_command_refuses_unusable_crl(pki: TestPKI, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from router.cli import main

    path = tmp_path / "router.toml"
    path.write_text(_toml(pki, tmp_path / "data", revoke(pki, "bad")))
    assert CliRunner().invoke(main, ["config", "check", str(path)]).exit_code == 0
    path.write_text(_toml(pki, tmp_path / "data", _foreign_crl(tmp_path)))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code != 0
    assert "router.toml:8" in result.output and "not signed by the CA" in result.output


# -- reload --------------------------------------------------------------------------------

def _ca_revoke(data_dir: Path, pki: TestPKI, name: str) -> Path:
    """``router ca revoke --cert`` on the signing master (our test CA copied into
    ``DATA_DIR/ca``, where ``router ca init`` puts it); the CRL it wrote."""
    from click.testing import CliRunner

    from router.cli import main

    ca_dir = data_dir / "ca"
    if not ca_dir.exists():
        ca_dir.mkdir(parents=True)
        shutil.copy(pki.ca_cert, ca_dir / "ca.crt")
        shutil.copy(pki.ca_key, ca_dir / "ca.key")
    result = CliRunner().invoke(main, ["ca", "revoke", "--cert", str(pki.cert(name)),
                                       "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return ca_dir / pkimod.CRL_NAME


async def _refused(spec: ClusterSpec, pki: TestPKI, name: str) -> None:
    """``name`` tries to connect; the node must not admit it."""
    try:       # TLS 1.3: the client's handshake ends before the server checks it
        peer = await FakePeer.connect(spec.port("master"), pki, name, server_name="master")
        await peer.wait_closed(timeout=5)
        await peer.close()
    except (ssl.SSLError, OSError):
        pass


@LIBS
def test_reload_adds_crl_revoked_refused_others_stay(tmp_path: Path, library: str,
                                                     run: Any) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master", "agent0", "agent1", "agent2"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)]
                       + [(a, [a], "master") for a in ("agent0", "agent1", "agent2")],
                       libraries={"master": library})
    data_dir = tmp_path / "master"
    key_line = f'key = "{pki.key("master")}"'

    def write(crl: Path | None) -> None:
        text = spec.toml("master")
        if crl is not None:
            text = text.replace(key_line, f'{key_line}\ncrl_file = "{crl}"')
        (tmp_path / "master.toml").write_text(text)

    async def main() -> None:
        master = await spec.start("master")
        node = master.node
        try:
            agent0 = await connect(spec, pki, "agent0")
            agent1 = await connect(spec, pki, "agent1")
            # The signing master revokes agent1 and agent2; the node learns it on reload.
            _ca_revoke(data_dir, pki, "agent1")
            crl = _ca_revoke(data_dir, pki, "agent2")
            write(crl)
            context = node.server_context
            record = await master.reload("test")
            assert record.result == "ok", record
            assert record.changes.get("tls") is True
            assert node.server_context is not context
            assert record.sessions_closed == ["agent1"]
            await agent1.wait_closed()
            assert node.disconnects.get(("revoked",)) == 1
            assert not agent0.closed and "agent0" in node.connections
            for name in ("agent2", "agent1"):
                await _refused(spec, pki, name)
                assert name not in node.connections
            await wait_until(lambda: node.handshake_failures.get(("cert_revoked",)) >= 2,
                             what="revoked handshakes counted")
            assert 'router_handshake_failures_total{reason="cert_revoked"}' in \
                await metrics_text(master)

            # A CRL that is not our CA's is refused; the contexts stay as they were.
            context = node.server_context
            shutil.copy(_foreign_crl(tmp_path), crl)
            record = await master.reload("test")
            assert record.result == "refused" and str(crl) in (record.error or "")
            assert "not signed by the CA" in (record.error or "")
            assert node.server_context is context
            await _refused(spec, pki, "agent2")         # the old CRL still applies
            assert "agent2" not in node.connections

            # Re-issued under the same name (contents changed): agent0 revoked too.
            crl.unlink()
            _ca_revoke(data_dir, pki, "agent1")
            _ca_revoke(data_dir, pki, "agent0")
            record = await master.reload("test")
            assert record.result == "ok" and record.sessions_closed == ["agent0"], record
            await agent0.wait_closed()
            await _refused(spec, pki, "agent0")
            assert not node.connections

            # The CRL dropped from the configuration: everyone of our CA gets in again.
            write(None)
            record = await master.reload("test")
            assert record.result == "ok", record
            again = await connect(spec, pki, "agent2")
            await wait_until(lambda: "agent2" in node.connections, what="agent2 back")
            await again.close()
            await agent0.close()
            await agent1.close()
        finally:
            await master.stop()

    run(main())


def test_node_refuses_to_start_with_unusable_crl(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki", ["master"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None)])
    key_line = f'key = "{pki.key("master")}"'
    path = tmp_path / "master.toml"
    path.write_text(spec.toml("master").replace(
        key_line, f'{key_line}\ncrl_file = "{tmp_path / "missing.crl"}"'))
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path)
    assert info.value.key == "tls.crl_file" and info.value.line is not None


def test_crl_close_to_its_next_update_is_warned_about(pki: TestPKI, caplog: Any) -> None:
    ca_cert, ca_key = _ca(pki)
    fresh = revoke(pki, "bad")
    caplog.set_level("WARNING", logger="router.tls")
    node(pki, "bundled", "server", fresh)
    assert "CRL expires" not in caplog.text
    soon = pkimod.revoke(ca_cert, ca_key, pki.directory / "soon.crl", [], days=3)
    node(pki, "system", "server", soon)
    assert f"{soon}: the CRL expires in 2.9 days" in caplog.text or \
        f"{soon}: the CRL expires in 3.0 days" in caplog.text
