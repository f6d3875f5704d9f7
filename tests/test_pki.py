"""CA creation, certificate issuing, Icinga file layout and tickets."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from router import pki
from router.transport import tls
from router.errors import TLSSetupError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, x509.Certificate, object]:
    directory = tmp_path_factory.mktemp("ca")
    pki.create_ca(directory)
    cert, key = pki.load_ca(directory)
    return directory, cert, key


# -- tickets ------------------------------------------------------------------------------

def test_ticket_vector() -> None:
    # icinga-protocol.md §7
    assert pki.ticket("agent1.example.com", "example-salt") == \
        "45e924c693ca6333141014ff7cb71356ee439ea8"


def test_ticket_shape_and_check() -> None:
    value = pki.ticket("x", "y")
    assert len(value) == 40 and value == value.lower()
    assert value == hashlib.pbkdf2_hmac("sha1", b"x", b"y", 50000, 20).hex()
    assert pki.check_ticket("x", "y", value)
    assert not pki.check_ticket("x", "y", value[:-1] + ("0" if value[-1] != "0" else "1"))
    assert not pki.check_ticket("x", "z", value)
    assert not pki.check_ticket("x", "y", "")


# -- CA -----------------------------------------------------------------------------------

def test_create_ca(tmp_path: Path) -> None:
    cert_path, key_path = pki.create_ca(tmp_path / "ca", common_name="Icinga CA")
    assert cert_path == tmp_path / "ca" / "ca.crt" and key_path == tmp_path / "ca" / "ca.key"
    assert _mode(cert_path) == 0o644
    assert _mode(key_path) == 0o600
    assert _mode(tmp_path / "ca") == 0o700
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ca.key"]
    cert, key = pki.load_ca(tmp_path / "ca")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert _cn(cert) == "Icinga CA" and cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(cert)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 15 * 365 <= days <= 15 * 365 + 1


def test_create_ca_rsa(tmp_path: Path) -> None:
    pki.create_ca(tmp_path, key_type="rsa", days=10)
    cert, key = pki.load_ca(tmp_path)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537


def test_load_ca_errors(tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="ca.crt: certificate file does not exist"):
        pki.load_ca(tmp_path)
    pki.create_ca(tmp_path / "a")
    pki.create_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(TLSSetupError, match="does not match"):
        pki.load_ca(tmp_path / "a")


def test_generate_key_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="dsa"):
        pki.generate_key("dsa")


# -- leaf certificates --------------------------------------------------------------------

def test_issue_certificate(ca) -> None:
    _, ca_cert, ca_key = ca
    cert, key = pki.issue_certificate(ca_cert, ca_key, "agent1.example.com")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert _cn(cert) == "agent1.example.com"
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.version == x509.Version.v3
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["agent1.example.com"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert 0 < cert.serial_number < 2**159
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc <= now
    assert abs((cert.not_valid_after_utc - now) - dt.timedelta(days=397)) < dt.timedelta(minutes=1)


def test_issue_certificate_serials_differ(ca) -> None:
    _, ca_cert, ca_key = ca
    key = pki.generate_key()
    serials = {pki.issue_certificate(ca_cert, ca_key, "n", key=key)[0].serial_number
               for _ in range(5)}
    assert len(serials) == 5


def test_issue_certificate_for_public_key(ca) -> None:
    # Re-signing a presented certificate: only its public key is known.
    _, ca_cert, ca_key = ca
    private = pki.generate_key()
    cert, returned = pki.issue_certificate(ca_cert, ca_key, "agent", key=private.public_key())
    assert returned == private.public_key()
    assert cert.public_key() == private.public_key()


def test_issue_certificate_rsa_and_window(ca) -> None:
    _, ca_cert, ca_key = ca
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    cert, key = pki.issue_certificate(ca_cert, ca_key, "r", key_type="rsa", not_before=start,
                                      days=10)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + dt.timedelta(days=10)
    end = dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc)
    cert, _ = pki.issue_certificate(ca_cert, ca_key, "r", key=key, not_before=start,
                                    not_after=end)
    assert cert.not_valid_after_utc == end


def test_fingerprint(ca) -> None:
    _, ca_cert, _ = ca
    from cryptography.hazmat.primitives.serialization import Encoding
    fp = pki.fingerprint(ca_cert)
    assert fp == hashlib.sha256(ca_cert.public_bytes(Encoding.DER)).hexdigest()
    assert len(fp) == 64 and fp == fp.lower()


def test_write_files_atomic_and_modes(ca, tmp_path: Path) -> None:
    _, ca_cert, ca_key = ca
    cert, key = pki.issue_certificate(ca_cert, ca_key, "n")
    pki.write_certificate(tmp_path / "n.crt", cert)
    pki.write_private_key(tmp_path / "n.key", key)
    assert _mode(tmp_path / "n.crt") == 0o644
    assert _mode(tmp_path / "n.key") == 0o600
    # Overwrite keeps the modes and leaves no temporary files behind.
    (tmp_path / "n.crt").chmod(0o600)
    pki.write_certificate(tmp_path / "n.crt", cert)
    assert _mode(tmp_path / "n.crt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.crt", "n.key"]
    assert pki.load_certificates(tmp_path / "n.crt") == [cert]
    loaded = pki.load_private_key(tmp_path / "n.key")
    assert loaded.private_numbers() == key.private_numbers()


# -- node layout --------------------------------------------------------------------------

def test_ensure_node_pki_creates_icinga_layout(tmp_path: Path) -> None:
    node = pki.ensure_node_pki(tmp_path, "master1.example.com")
    certs = tmp_path / "certs"
    assert node == pki.NodePKI(ca_cert=certs / "ca.crt", cert=certs / "master1.example.com.crt",
                               key=certs / "master1.example.com.key")
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == node.ca_cert.read_bytes()
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert _mode(tmp_path / "ca" / "ca.crt") == 0o644
    assert _mode(node.ca_cert) == 0o644
    assert _mode(node.cert) == 0o644
    assert _mode(node.key) == 0o600
    assert _mode(certs) == 0o700 and _mode(tmp_path / "ca") == 0o700
    cert = pki.load_certificates(node.cert)[0]
    assert _cn(cert) == "master1.example.com"
    # Usable as is by both contexts.
    tls.server_context(node.ca_cert, node.cert, node.key)
    tls.client_context(node.ca_cert, node.cert, node.key)


def test_ensure_node_pki_is_idempotent(tmp_path: Path) -> None:
    first = pki.ensure_node_pki(tmp_path, "n1")
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
                if p.is_file()}
    second = pki.ensure_node_pki(tmp_path, "n1")
    assert first == second
    assert snapshot == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
                        if p.is_file()}


def test_ensure_node_pki_uses_existing_certs_without_ca(tmp_path: Path) -> None:
    # An enrolled node: certs/ from elsewhere, no ca/ directory. Nothing must be created.
    pki.create_ca(tmp_path / "elsewhere")
    pki.issue_node_files(tmp_path / "elsewhere", tmp_path / "certs", "agent")
    node = pki.ensure_node_pki(tmp_path, "agent")
    assert node.cert == tmp_path / "certs" / "agent.crt"
    assert not (tmp_path / "ca").exists()


def test_ensure_node_pki_second_node_name_reuses_ca(tmp_path: Path) -> None:
    a = pki.ensure_node_pki(tmp_path, "a")
    ca_before = (tmp_path / "ca" / "ca.crt").read_bytes()
    b = pki.ensure_node_pki(tmp_path, "b")
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == ca_before
    assert a.ca_cert == b.ca_cert and a.cert != b.cert


def test_ensure_node_pki_keeps_existing_key(tmp_path: Path) -> None:
    node = pki.ensure_node_pki(tmp_path, "n")
    key_bytes = node.key.read_bytes()
    node.cert.unlink()
    again = pki.ensure_node_pki(tmp_path, "n")
    assert again.key.read_bytes() == key_bytes
    tls.server_context(again.ca_cert, again.cert, again.key)


def test_ensure_node_pki_half_a_ca(tmp_path: Path) -> None:
    pki.create_ca(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(TLSSetupError, match="ca.key"):
        pki.ensure_node_pki(tmp_path, "n")


def test_issue_node_files(tmp_path: Path) -> None:
    pki.create_ca(tmp_path / "ca")
    cert_path, key_path = pki.issue_node_files(tmp_path / "ca", tmp_path / "out", "sat1")
    assert cert_path == tmp_path / "out" / "sat1.crt"
    assert key_path == tmp_path / "out" / "sat1.key"
    assert _mode(cert_path) == 0o644 and _mode(key_path) == 0o600
    assert (tmp_path / "out" / "ca.crt").read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
    tls.check_own_files(tmp_path / "out" / "ca.crt", cert_path, key_path)
    assert tls.cert_is_current(cert_path.read_bytes(), tmp_path / "out" / "ca.crt")


def test_generate_key_types():
    """EC P-256 by default; RSA 2048; RSA 4096 as Icinga's own CLI makes."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from router.pki import KEY_TYPES, generate_key
    assert KEY_TYPES == ("ec", "rsa", "rsa4096")
    assert isinstance(generate_key(), ec.EllipticCurvePrivateKey)
    assert generate_key("rsa").key_size == 2048
    big = generate_key("rsa4096")
    assert isinstance(big, rsa.RSAPrivateKey) and big.key_size == 4096
    with pytest.raises(ValueError, match="rsa4096"):
        generate_key("dsa")


def test_ensure_node_pki_creates_the_data_dir_private(tmp_path) -> None:
    """The quick start's data directory is 0700 from the start (mkdir(parents=True) gave
    the umask's 0755 to it, and the start-up check then warned about our own directory)."""
    import os

    old = os.umask(0o022)
    try:
        pki.ensure_node_pki(tmp_path / "fresh" / "router-data", "vm")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "fresh" / "router-data").stat().st_mode)
    assert mode == 0o700, oct(mode)
