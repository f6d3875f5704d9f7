"""Renewal with a new key, the library part (router.pki.rekey): the new key's kind, the
request's proof of the old key, and the key pair swap that survives a crash."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from router import pki
from router.pki.rekey import PREVIOUS_OID, PROOF_OID


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ca")
    pki.create_ca(directory)
    return pki.load_ca(directory)


def _leaf(ca, cn: str, key: pki.PrivateKey) -> x509.Certificate:
    cert, _ = pki.issue_certificate(ca[0], ca[1], cn, key=key)
    return cert


@pytest.mark.parametrize(("current", "policy", "kind", "size"), [
    (("rsa", 2048), pki.KeyPolicy(), rsa.RSAPrivateKey, 2048),
    (("rsa", 2048), pki.KeyPolicy(min_rsa_bits=3072), rsa.RSAPrivateKey, 3072),
    (("ec", 384), pki.KeyPolicy(), ec.EllipticCurvePrivateKey, 384),
    (("ec", 256), pki.KeyPolicy(ec_curves=("secp521r1",)), ec.EllipticCurvePrivateKey, 521),
    (("ec", 256), pki.KeyPolicy(ec_curves=("brainpoolp384r1",)), ec.EllipticCurvePrivateKey,
     384),
])
def test_the_new_key_is_of_the_current_kind_within_policy(current, policy, kind, size):
    old = pki.generate_key(*current)
    new = pki.renewal_key(old, policy)
    assert isinstance(new, kind) and new.key_size == size
    assert policy.refusal(new.public_key()) is None
    assert pki.renewal_key(old.public_key(), policy).key_size == size   # a public key too


@pytest.mark.parametrize("old_type", [("ec", 256), ("rsa", 3072)])  # a 384-byte proof
def test_a_renewal_request_proves_the_old_key(ca, old_type):
    old_key = pki.generate_key(*old_type)
    old = _leaf(ca, "agent1", old_key)
    new_key = pki.generate_key("ec")
    request = pki.rekey_request(old, old_key, new_key)
    assert pki.common_name(request) == "agent1"
    assert pki.same_public_key(request, new_key)
    assert pki.signed_by(request, request)                 # self-signed by the new key
    assert pki.renewal_proof(request) == old
    # an ordinary request (what Icinga sends) carries no proof
    assert pki.renewal_proof(pki.self_signed_certificate(new_key, "agent1")) is None
    # what gets signed certifies the new key and carries none of the proof
    signed = pki.sign_request(ca[0], ca[1], request)
    assert pki.same_public_key(signed, new_key)
    oids = {ext.oid for ext in signed.extensions}
    assert PREVIOUS_OID not in oids and PROOF_OID not in oids


def test_the_current_key_must_belong_to_the_current_certificate(ca):
    old = _leaf(ca, "agent1", pki.generate_key("ec"))
    with pytest.raises(ValueError, match="does not belong"):
        pki.rekey_request(old, pki.generate_key("ec"), pki.generate_key("ec"))


def _rebuild(request: x509.Certificate, key: pki.PrivateKey, *,
             drop: x509.ObjectIdentifier | None = None,
             replace: dict[x509.ObjectIdentifier, bytes] | None = None,
             cn: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]) if cn \
        else request.subject
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(request.public_key()).serial_number(request.serial_number)
               .not_valid_before(request.not_valid_before_utc)
               .not_valid_after(request.not_valid_after_utc))
    for ext in request.extensions:
        if ext.oid == drop:
            continue
        value = ext.value
        if replace and ext.oid in replace:
            value = x509.UnrecognizedExtension(ext.oid, replace[ext.oid])
        builder = builder.add_extension(value, ext.critical)
    return builder.sign(key, hashes.SHA256())


def test_broken_proofs_are_refused(ca):
    old_key = pki.generate_key("ec")
    old = _leaf(ca, "agent1", old_key)
    new_key = pki.generate_key("ec")
    good = pki.rekey_request(old, old_key, new_key)
    cases = {
        "without a proof": _rebuild(good, new_key, drop=PROOF_OID),
        "bad length": _rebuild(good, new_key, replace={PROOF_OID: b"\x04\x05ab"}),
        "not an OCTET STRING": _rebuild(good, new_key, replace={PROOF_OID: b"\x02\x01\x01"}),
        "previous certificate is unusable": _rebuild(
            good, new_key, replace={PREVIOUS_OID: b"garbage"}),
        "names a previous certificate for CN": _rebuild(good, new_key, cn="agent2"),
        "not signed by its own": _rebuild(good, pki.generate_key("ec")),
        # the proof and previous certificate moved onto a request for another key
        "does not verify": _swap_key(good, pki.generate_key("ec")),
    }
    for why, request in cases.items():
        with pytest.raises(pki.CertRequestError, match=why):
            pki.renewal_proof(request)


def _swap_key(request: x509.Certificate, other: pki.PrivateKey) -> x509.Certificate:
    """The request's proof and previous certificate on a certificate for ``other``'s key:
    the old key never signed that key."""
    builder = (x509.CertificateBuilder().subject_name(request.subject)
               .issuer_name(request.subject).public_key(other.public_key())
               .serial_number(request.serial_number)
               .not_valid_before(request.not_valid_before_utc)
               .not_valid_after(request.not_valid_after_utc))
    for ext in request.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(other, hashes.SHA256())


def test_key_pair_swap_and_its_recovery(tmp_path, ca):
    key_path, cert_path = tmp_path / "n.key", tmp_path / "n.crt"
    old_key = pki.generate_key("ec")
    pki.write_private_key(key_path, old_key)
    pki.write_certificate(cert_path, _leaf(ca, "n", old_key))
    new_key = pki.generate_key("ec")
    new = _leaf(ca, "n", new_key)
    with pytest.raises(ValueError):
        pki.install_key_pair(key_path, cert_path, old_key, new)     # a mismatched pair
    assert pki.same_public_key(pki.load_certificates(cert_path)[0], old_key)
    pki.install_key_pair(key_path, cert_path, new_key, new)
    assert pki.load_certificates(cert_path)[0] == new
    assert pki.same_public_key(new, pki.load_private_key(key_path))
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    assert not pki.staged_cert_path(cert_path).exists()
    assert not pki.finish_key_rotation(key_path, cert_path)         # nothing to finish

    # a crash after the key was replaced, before the certificate was
    newer_key = pki.generate_key("ec")
    newer = _leaf(ca, "n", newer_key)
    pki.write_certificate(pki.staged_cert_path(cert_path), newer)
    pki.write_private_key(key_path, newer_key)
    assert pki.finish_key_rotation(key_path, cert_path)
    assert pki.load_certificates(cert_path)[0] == newer
    assert not pki.staged_cert_path(cert_path).exists()

    # a crash before the key was replaced: the staged certificate is dropped
    pki.write_certificate(pki.staged_cert_path(cert_path),
                          _leaf(ca, "n", pki.generate_key("ec")))
    assert not pki.finish_key_rotation(key_path, cert_path)
    assert pki.load_certificates(cert_path)[0] == newer
    assert not pki.staged_cert_path(cert_path).exists()


def test_node_start_completes_an_interrupted_rotation(tmp_path, run):
    """The node's start (router.app) finishes a swap a crash interrupted, then runs."""
    from tests.nodeutil import ClusterSpec
    from tests.pkiutil import make_test_pki

    own = make_test_pki(tmp_path / "own", ["master"])
    ca_pair = pki.load_ca(own.directory)
    new_key = pki.generate_key("ec")
    now = dt.datetime.now(dt.timezone.utc)
    new, _ = pki.issue_certificate(ca_pair[0], ca_pair[1], "master", key=new_key,
                                   not_before=now - dt.timedelta(minutes=1))
    pki.write_certificate(pki.staged_cert_path(own.cert("master")), new)
    pki.write_private_key(own.key("master"), new_key)
    spec = ClusterSpec(tmp_path, own, [("master", ["master"], None)])

    async def main():
        master = await spec.start("master")
        await master.stop()

    run(main())
    assert pki.load_certificates(own.cert("master"))[0] == new
    assert not pki.staged_cert_path(own.cert("master")).exists()
