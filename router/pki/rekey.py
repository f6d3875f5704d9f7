"""Renewal with a new key: the request that proves who is asking, and the new key itself.

Icinga renews a certificate by re-signing the key it already certifies: the requester
presents its current certificate, the signer sees that its CA signed it and issues a new
one for the same key. A request for a *new* key is, to Icinga, a first enrollment and needs
a ticket or an operator's ``icinga2 ca sign``. A router renews with a new key
(``[pki] renew_with_new_key``, docs/pki.md) without either, because the request carries a
proof that the requester holds the key of its current, CA-signed certificate:

- the request is an ordinary Icinga ``cert_request``: a certificate for the new key,
  self-signed by it (so it also proves the new key is held), subject as before;
- extension :data:`PREVIOUS_OID` holds the DER of the current certificate;
- extension :data:`PROOF_OID` holds (as a DER OCTET STRING) a signature by the *current*
  key over :data:`PROOF_CONTEXT` and the new key's SubjectPublicKeyInfo.

The request travels as an opaque PEM through any satellite, ours or Icinga's (both store
and forward ``cert_request`` unchanged). A router signer that finds a valid proof whose
previous certificate chains to its CA treats the request like the renewal of that
certificate; an Icinga signer ignores the (non-critical) extensions and leaves it pending,
which is why the node falls back to re-signing its current key (node/owncert.py).

The OIDs are in the ``2.25`` arc (X.667: an OID from a UUID), which needs no registration.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from router.pki.certs import (
    CLOCK_SKEW,
    PrivateKey,
    generate_key,
    load_certificates,
    load_private_key,
    write_certificate,
    write_private_key,
)
from router.pki.requests import CertRequestError, common_name
from router.pki.signing import KeyPolicy, same_public_key, signed_by

__all__ = [
    "finish_key_rotation",
    "install_key_pair",
    "PREVIOUS_OID",
    "PROOF_CONTEXT",
    "PROOF_OID",
    "rekey_request",
    "renewal_key",
    "renewal_proof",
    "staged_cert_path",
]

_ARC: Final = "2.25.322404033502816094177909235492442356163"
#: The certificate being renewed (DER), in a request for a new key.
PREVIOUS_OID: Final = x509.ObjectIdentifier(_ARC + ".1")
#: The previous key's signature over PROOF_CONTEXT + the new key's SPKI (OCTET STRING).
PROOF_OID: Final = x509.ObjectIdentifier(_ARC + ".2")
#: Curves ``[pki] ec_curves`` may name, by name.
_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
    "secp224r1": ec.SECP224R1, "secp256k1": ec.SECP256K1,
    "brainpoolp256r1": ec.BrainpoolP256R1, "brainpoolp384r1": ec.BrainpoolP384R1,
    "brainpoolp512r1": ec.BrainpoolP512R1}
#: Signed together with the new key, so that the signature means nothing elsewhere.
PROOF_CONTEXT: Final = b"router pki renewal with a new key\x00"


def renewal_key(current: PrivateKey | CertificatePublicKeyTypes,
                policy: KeyPolicy | None = None) -> PrivateKey:
    """A new key of the current key's kind, within ``policy``: RSA of the same size (at
    least ``policy.min_rsa_bits``), EC on the same curve (the policy's first curve when
    the current one is no longer allowed)."""
    policy = policy or KeyPolicy()
    public = current.public_key() if isinstance(
        current, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else current
    if isinstance(public, rsa.RSAPublicKey):
        return generate_key("rsa", max(public.key_size, policy.min_rsa_bits))
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name.lower() in policy.ec_curves:
            return ec.generate_private_key(public.curve)
        for name in policy.ec_curves:
            if name in _CURVES:
                return ec.generate_private_key(_CURVES[name]())
        return generate_key("ec")
    raise ValueError(f"cannot renew a {type(public).__name__} key (need RSA or EC)")


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _octet_string(data: bytes) -> bytes:
    size = len(data)
    if size < 0x80:
        head = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(raw)]) + raw
    return b"\x04" + head + data


def _parse_octet_string(der: bytes) -> bytes:
    if len(der) < 2 or der[0] != 0x04:
        raise CertRequestError("renewal proof is not an OCTET STRING")
    first = der[1]
    if first < 0x80:
        size, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or len(der) < 2 + count:
            raise CertRequestError("renewal proof has a bad length")
        size, start = int.from_bytes(der[2:2 + count], "big"), 2 + count
    if start + size != len(der):
        raise CertRequestError("renewal proof has a bad length")
    return der[start:]


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _verify(public: CertificatePublicKeyTypes, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def rekey_request(current: x509.Certificate, current_key: PrivateKey,
                  new_key: PrivateKey) -> x509.Certificate:
    """The ``cert_request`` for ``new_key``, proving that we hold ``current_key``."""
    if not same_public_key(current, current_key):
        raise ValueError("the current key does not belong to the current certificate")
    cn = common_name(current)
    new_public = new_key.public_key()
    proof = _sign(current_key, PROOF_CONTEXT + _spki(new_public))
    start = dt.datetime.now(dt.timezone.utc) - CLOCK_SKEW
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(current.subject)
        .public_key(new_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(
            PREVIOUS_OID, current.public_bytes(serialization.Encoding.DER)), critical=False)
        .add_extension(x509.UnrecognizedExtension(PROOF_OID, _octet_string(proof)),
                       critical=False)
    )
    return builder.sign(new_key, hashes.SHA256())


def renewal_proof(request: x509.Certificate) -> x509.Certificate | None:
    """The certificate a new-key request renews, when the request proves it holds that
    certificate's key; None when the request carries no proof (a plain request).

    Whether the previous certificate chains to the CA, and is due for renewal, is for
    the signer to check: this only checks that the request is consistent.

    Raises:
        CertRequestError: the request carries a proof that does not hold (a malformed
            extension, another CN, a signature that does not verify).
    """
    try:
        previous_ext = request.extensions.get_extension_for_oid(PREVIOUS_OID).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:          # duplicate or malformed extensions
        raise CertRequestError(f"unusable extensions: {exc}") from None
    try:
        proof_ext = request.extensions.get_extension_for_oid(PROOF_OID).value
    except x509.ExtensionNotFound:
        raise CertRequestError("renewal request without a proof of the previous key") \
            from None
    assert isinstance(previous_ext, x509.UnrecognizedExtension)
    assert isinstance(proof_ext, x509.UnrecognizedExtension)
    try:
        previous = x509.load_der_x509_certificate(previous_ext.value)
    except ValueError as exc:
        raise CertRequestError(f"renewal request: the previous certificate is unusable "
                               f"({exc})") from None
    cn = common_name(request)
    if not cn or common_name(previous) != cn:
        raise CertRequestError(f"renewal request for CN '{cn}' names a previous "
                               f"certificate for CN '{common_name(previous)}'")
    if not signed_by(request, request):
        raise CertRequestError(f"renewal request for CN '{cn}' is not signed by its "
                               "own (new) key")
    signature = _parse_octet_string(proof_ext.value)
    if not _verify(previous.public_key(), signature,
                   PROOF_CONTEXT + _spki(request.public_key())):
        raise CertRequestError(f"renewal request for CN '{cn}': the proof does not verify "
                               "with the previous certificate's key")
    return previous


def staged_cert_path(cert_path: str | os.PathLike[str]) -> Path:
    """Where :func:`install_key_pair` puts the new certificate while it swaps the pair."""
    return Path(f"{os.fspath(cert_path)}.new")


def install_key_pair(key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str],
                     key: PrivateKey, cert: x509.Certificate) -> None:
    """Replace a key and its certificate, each file atomically (pki.atomic_write).

    Two files cannot be replaced in one step: the certificate is staged first
    (``<cert>.new``), then the key, then the certificate are replaced. A crash between
    the last two leaves the new key beside the old certificate and the staged one;
    :func:`finish_key_rotation` (run at start) completes it."""
    if not same_public_key(cert, key):
        raise ValueError("the certificate does not certify the key")
    staged = staged_cert_path(cert_path)
    write_certificate(staged, cert)
    write_private_key(key_path, key)
    write_certificate(cert_path, cert)
    staged.unlink(missing_ok=True)


def finish_key_rotation(key_path: str | os.PathLike[str],
                        cert_path: str | os.PathLike[str]) -> bool:
    """Complete a key swap that :func:`install_key_pair` did not finish: when the key no
    longer matches the certificate but matches the staged one, install the staged one.
    A staged certificate that is not needed is removed, unless it certifies the pending
    key ``<key>.new`` of ``router pki request --new-key``, which keeps its self-signed
    certificate under the same name until the request is signed (removed, the signed
    request was never fetched: review). True when it completed a swap."""
    staged = staged_cert_path(cert_path)
    if not staged.exists():
        return False
    try:
        key = load_private_key(key_path)
        new = load_certificates(staged)[0]
    except Exception:  # noqa: BLE001 - TLSSetupError: the normal start-up checks report it
        return False
    pending = Path(f"{os.fspath(key_path)}.new")
    try:
        current_ok = same_public_key(load_certificates(cert_path)[0], key)
    except Exception:  # noqa: BLE001 - TLSSetupError: a missing or broken certificate
        current_ok = False
    if not current_ok and same_public_key(new, key):
        # Interrupted between the key and the certificate: the key in place may be the
        # pending one (it is removed only after the swap), so this comes first (review).
        write_certificate(cert_path, new)
        staged.unlink(missing_ok=True)
        try:
            if pending.exists() and same_public_key(new, load_private_key(pending)):
                pending.unlink()                # installed: a copy of the key in place
        except Exception:  # noqa: BLE001 - TLSSetupError: a broken pending key, kept
            pass
        return True
    try:
        if pending.exists() and same_public_key(new, load_private_key(pending)):
            return False
    except Exception:  # noqa: BLE001 - TLSSetupError: a broken pending key, not ours to fix
        return False
    staged.unlink(missing_ok=True)
    return False
