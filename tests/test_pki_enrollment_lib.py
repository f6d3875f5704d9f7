"""The pki library behind enrollment: the request store, signing, the key policy."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from router import pki
from router.transport import tls

FP = "ab" * 32


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def leaf_key() -> pki.PrivateKey:
    return pki.generate_key("ec")


@pytest.fixture(scope="module")
def request_cert(leaf_key) -> x509.Certificate:
    return pki.self_signed_certificate(leaf_key, "agent1.example.com")


@pytest.fixture(scope="module", params=["ec", "rsa"])
def ca(request, tmp_path_factory) -> tuple[x509.Certificate, pki.PrivateKey]:
    directory = tmp_path_factory.mktemp(f"ca-{request.param}")
    pki.create_ca(directory, key_type=request.param)
    return pki.load_ca(directory)


# -- fingerprints ----------------------------------------------------------------------

@pytest.mark.parametrize("value,ok", [
    (FP, True), ("0" * 64, True), ("AB" * 32, False), ("ab" * 31, False), ("ab" * 33, False),
    ("../" + "a" * 61, False), ("g" * 64, False), (None, False), (12, False),
    (FP + "\n", False)])
def test_valid_fingerprint(value, ok) -> None:
    assert pki.valid_fingerprint(value) is ok


def test_store_rejects_bad_fingerprints(tmp_path: Path) -> None:
    store = pki.RequestStore(tmp_path)
    for bad in ("../../etc/passwd", "ab", "AB" * 32):
        with pytest.raises(pki.CertRequestError, match="invalid certificate fingerprint"):
            store.path(bad)
        with pytest.raises(pki.CertRequestError):
            store.get(bad)


# -- the store -------------------------------------------------------------------------

def test_store_layout_modes_and_roundtrip(tmp_path: Path, request_cert) -> None:
    store = pki.RequestStore(tmp_path)
    assert store.get(FP) is None and store.stamp() == 0
    pem = pki.certificate_pem(request_cert)
    store.save_pending(FP, pem, "t1")
    path = tmp_path / "certificate-requests" / f"{FP}.json"
    assert _mode(path.parent) == 0o700 and _mode(path) == 0o600
    assert json.loads(path.read_text()) == {"cert_request": pem, "ticket": "t1"}
    got = store.get(FP)
    assert got is not None and not got.signed and got.common_name == "agent1.example.com"
    assert store.pending_count() == 1
    assert store.set_response(FP, "RESPONSE")
    data = json.loads(path.read_text())
    assert data == {"cert_request": pem, "ticket": "t1", "cert_response": "RESPONSE"}
    assert _mode(path) == 0o600
    assert store.pending_count() == 0
    # a new pending save keeps the response (Icinga never forgets a signed answer)
    store.save_pending(FP, pem, "t2")
    assert store.get(FP).cert_response == "RESPONSE"
    # no leftovers from the atomic writes
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_set_response_without_request(tmp_path: Path, request_cert) -> None:
    store = pki.RequestStore(tmp_path)
    assert store.set_response(FP, "X") is False
    assert not store.directory.exists()
    assert store.set_response(FP, "X", cert_request=pki.certificate_pem(request_cert))
    assert store.get(FP).cert_response == "X"


def test_remove_restore(tmp_path: Path, request_cert) -> None:
    store = pki.RequestStore(tmp_path)
    with pytest.raises(pki.CertRequestError, match="no certificate request"):
        store.remove(FP)
    store.save_pending(FP, pki.certificate_pem(request_cert), "")
    before = store.stamp()
    time.sleep(0.01)
    store.remove(FP)
    assert store.stamp() != before            # a node notices through the mtime
    assert store.get(FP) is None and store.is_removed(FP)
    assert store.get_removed(FP).removed
    with pytest.raises(pki.CertRequestError, match="already removed"):
        store.remove(FP)
    assert [r.fingerprint for r in store.list().requests] == []
    assert [r.removed for r in store.list(include_removed=True).requests] == [True]
    store.restore(FP)
    assert store.get(FP) is not None and not store.is_removed(FP)
    with pytest.raises(pki.CertRequestError, match="no removed"):
        store.restore(FP)


def test_corrupt_files_are_skipped_and_reported(tmp_path: Path, request_cert) -> None:
    store = pki.RequestStore(tmp_path)
    store.save_pending(FP, pki.certificate_pem(request_cert), "")
    bad = {"cd" * 32: b"{not json", "ef" * 32: b"[]", "01" * 32: b'{"cert_request": 5}',
           "23" * 32: b'{"cert_request": "-----BEGIN CERTIFICATE-----\\nAAAA\\n"}'}
    for fp, data in bad.items():
        (store.directory / f"{fp}.json").write_bytes(data)
    (store.directory / "README").write_text("ignored")
    (store.directory / "short.json").write_text("{}")
    listing = store.list()
    assert [r.fingerprint for r in listing.requests] == [FP]
    assert sorted(p.stem for p, _ in listing.corrupt) == sorted(bad)
    assert all(why for _, why in listing.corrupt)
    assert store.pending_count() == 1
    with pytest.raises(pki.CertRequestError, match="not JSON"):
        store.get("cd" * 32)
    # a corrupt file is replaced by a new request for the same fingerprint
    store.save_pending("cd" * 32, pki.certificate_pem(request_cert), "")
    assert store.get("cd" * 32) is not None


def test_prune(tmp_path: Path, request_cert) -> None:
    store = pki.RequestStore(tmp_path)
    pem = pki.certificate_pem(request_cert)
    store.save_pending(FP, pem, "")
    store.save_pending("cd" * 32, pem, "")
    old = time.time() - 8 * 86400
    os.utime(store.path("cd" * 32), (old, old))
    assert store.prune() == 1
    assert [r.fingerprint for r in store.list().requests] == [FP]


# -- signing ---------------------------------------------------------------------------

def test_sign_request_with_rsa_and_ec_cas(ca, request_cert, leaf_key, tmp_path) -> None:
    ca_cert, ca_key = ca
    cert = pki.sign_request(ca_cert, ca_key, request_cert, days=30)
    assert cert.subject == request_cert.subject
    assert pki.same_public_key(cert, leaf_key)
    assert pki.signed_by(cert, ca_cert) and not pki.signed_by(request_cert, ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["agent1.example.com"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days == 30
    # what the node's renewal test sees: signed by our CA; 30 days left is due for renewal
    ca_path = tmp_path / "ca.crt"
    pki.write_certificate(ca_path, ca_cert)
    assert not tls.cert_is_current(cert, ca_path)
    assert tls.cert_is_current(pki.sign_request(ca_cert, ca_key, request_cert, days=60),
                               ca_path)
    default = pki.sign_request(ca_cert, ca_key, request_cert)
    assert (default.not_valid_after_utc - default.not_valid_before_utc).days == 397


def test_sign_request_keeps_other_subject_attributes(ca, leaf_key) -> None:
    ca_cert, ca_key = ca
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "web1")])
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    now = dt.datetime.now(dt.timezone.utc)
    req = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(leaf_key.public_key()).serial_number(1)
           .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
           .sign(leaf_key, hashes.SHA256()))
    assert pki.sign_request(ca_cert, ca_key, req).subject == name


def test_key_policy() -> None:
    policy = pki.KeyPolicy()
    assert policy.refusal(ec.generate_private_key(ec.SECP256R1()).public_key()) is None
    assert policy.refusal(ec.generate_private_key(ec.SECP384R1()).public_key()) is None
    assert "secp256k1" in policy.refusal(ec.generate_private_key(ec.SECP256K1()).public_key())
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    assert "1024 bits" in policy.refusal(small)
    assert pki.KeyPolicy(min_rsa_bits=1024).refusal(small) is None
    assert pki.KeyPolicy(ec_curves=("secp384r1",)).refusal(
        ec.generate_private_key(ec.SECP256R1()).public_key()) is not None
    from cryptography.hazmat.primitives.asymmetric import ed25519
    assert "not supported" in policy.refusal(ed25519.Ed25519PrivateKey.generate().public_key())


def test_sign_request_refuses_weak_keys_and_missing_cn(ca) -> None:
    ca_cert, ca_key = ca
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(pki.CertRequestError, match="below the minimum"):
        pki.sign_request(ca_cert, ca_key, pki.self_signed_certificate(weak, "weak"))
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    key = pki.generate_key("ec")
    empty = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no cn")])
    now = dt.datetime.now(dt.timezone.utc)
    req = (x509.CertificateBuilder().subject_name(empty).issuer_name(empty)
           .public_key(key.public_key()).serial_number(1).not_valid_before(now)
           .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    with pytest.raises(pki.CertRequestError, match="no common name"):
        pki.sign_request(ca_cert, ca_key, req)


def test_parse_request() -> None:
    key = pki.generate_key("ec")
    cert = pki.self_signed_certificate(key, "n1")
    assert pki.parse_request(pki.certificate_pem(cert)) == cert
    from cryptography.hazmat.primitives import serialization
    assert pki.parse_request(cert.public_bytes(serialization.Encoding.DER)) == cert
    for bad in ("", "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n", b"\x30"):
        with pytest.raises(pki.CertRequestError):
            pki.parse_request(bad)


def test_generate_key_sizes() -> None:
    assert pki.generate_key("rsa", 3072).key_size == 3072
    assert pki.generate_key("ec", 384).curve.name == "secp384r1"
    with pytest.raises(ValueError):
        pki.generate_key("rsa", 1024)
    with pytest.raises(ValueError):
        pki.generate_key("ec", 300)


def test_ticket_check_is_exact() -> None:
    good = pki.ticket("agent1.example.com", "example-salt")
    assert pki.check_ticket("agent1.example.com", "example-salt", good)
    assert not pki.check_ticket("agent1.example.com", "example-salt", good.upper())
    assert not pki.check_ticket("agent2.example.com", "example-salt", good)
    assert not pki.check_ticket("agent1.example.com", "example-salt", "")


# -- revocation ------------------------------------------------------------------------

def test_revoke_and_load_crl(ca, request_cert, tmp_path) -> None:
    ca_cert, ca_key = ca
    first = pki.sign_request(ca_cert, ca_key, request_cert)
    second = pki.sign_request(ca_cert, ca_key, request_cert)
    path = tmp_path / "ca.crl"
    pki.revoke(ca_cert, ca_key, path, [first])
    crl = pki.load_crl(path, ca_cert)
    assert pki.is_revoked(crl, first) and not pki.is_revoked(crl, second)
    assert 364 < pki.crl_days_left(crl) <= 365
    assert _mode(path) == 0o644
    pki.revoke(ca_cert, ca_key, path, [second, first])          # again: no duplicates
    crl = pki.load_crl(path, ca_cert)
    assert pki.is_revoked(crl, first) and pki.is_revoked(crl, second) and len(crl) == 2
    with pytest.raises(ValueError, match="not issued by this CA"):
        pki.revoke(ca_cert, ca_key, path, [request_cert])


def test_load_crl_refuses_other_cas_and_garbage(ca, tmp_path) -> None:
    ca_cert, ca_key = ca
    other_dir = tmp_path / "other"
    pki.create_ca(other_dir, common_name=ca_cert.subject.rfc4514_string()[3:])
    other_cert, other_key = pki.load_ca(other_dir)
    path = tmp_path / "other.crl"
    pki.revoke(other_cert, other_key, path, [])
    from router.errors import TLSSetupError
    with pytest.raises(TLSSetupError, match="not signed by the CA"):
        pki.load_crl(path, ca_cert)
    (tmp_path / "junk.crl").write_text("junk")
    with pytest.raises(TLSSetupError, match="junk.crl: not a CRL"):
        pki.load_crl(tmp_path / "junk.crl", ca_cert)
    with pytest.raises(TLSSetupError, match="does not exist"):
        pki.load_crl(tmp_path / "missing.crl", ca_cert)


# -- limits and the ticket cache -------------------------------------------------------

def test_budget() -> None:
    budget = pki.Budget(rate=2.0, burst=3.0, now=100.0)
    assert [budget.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(100.49) is False          # 0.98 tokens
    assert budget.take(100.51) is True
    assert budget.take(200.0) and budget.tokens == 2.0    # never more than the burst


def test_per_source_limit() -> None:
    limit = pki.PerSourceLimit(per_minute=2)
    assert limit.allow("a", 0.0) and limit.allow("a", 0.0) and not limit.allow("a", 0.0)
    assert limit.allow("b", 0.0)                 # another source has its own bucket
    assert not limit.allow("a", 29.0) and limit.allow("a", 31.0)   # one per 30 s
    limit.prune(200.0)
    assert len(limit) == 0


def test_ticket_checker_caches_and_compares() -> None:
    checker = pki.TicketChecker(size=2)
    good = pki.ticket("agent1.example.com", "example-salt")
    assert checker.check("agent1.example.com", "example-salt", good)
    assert not checker.check("agent1.example.com", "example-salt", "0" * 40)
    assert checker.computed == 1
    assert not checker.check("agent1.example.com", "other-salt", good)   # salt is part of it
    checker.check("x", "example-salt", "")
    assert checker.computed == 3
    assert checker.check("agent1.example.com", "example-salt", good)     # evicted: again
    assert checker.computed == 4
