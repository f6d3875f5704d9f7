"""Signing certificate requests: the key policy and the new leaf certificate.

A request on the Icinga wire is not PKCS#10 but a PEM X.509 certificate, normally the
requester's self-signed one (icinga-protocol.md §7). Signing it means issuing a new leaf
certificate with the request's subject and public key, ``SAN DNS:<CN>``, signed by the
CA's key, whether that is RSA (``icinga2 pki new-ca``) or EC (``router pki new-ca``).

Nobody proves they hold the private key of a request (Icinga does not ask either): the
ticket, or the operator's ``router ca sign``, is the authorisation. The key policy refuses
keys too weak to be worth certifying (RSA below 2048 bits, unknown curves, other key
types), which Icinga would sign.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from router.pki.certs import CLOCK_SKEW, LEAF_VALID_DAYS, PrivateKey, sign_leaf
from router.pki.requests import CertRequestError, common_name

__all__ = [
    "DEFAULT_EC_CURVES",
    "DEFAULT_MIN_RSA_BITS",
    "KeyPolicy",
    "parse_request",
    "same_public_key",
    "sign_request",
    "signed_by",
]

DEFAULT_MIN_RSA_BITS: Final = 2048
DEFAULT_EC_CURVES: Final = ("secp256r1", "secp384r1", "secp521r1")


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Which public keys a signer certifies (``[pki] min_rsa_bits``, ``ec_curves``)."""

    min_rsa_bits: int = DEFAULT_MIN_RSA_BITS
    ec_curves: tuple[str, ...] = DEFAULT_EC_CURVES

    def refusal(self, public: CertificatePublicKeyTypes) -> str | None:
        """Why ``public`` is refused, None when it is acceptable."""
        if isinstance(public, rsa.RSAPublicKey):
            if public.key_size < self.min_rsa_bits:
                return (f"RSA key of {public.key_size} bits is below the minimum of "
                        f"{self.min_rsa_bits}")
            if public.public_numbers().e < 65537:
                return f"RSA public exponent {public.public_numbers().e} is too small"
            return None
        if isinstance(public, ec.EllipticCurvePublicKey):
            if public.curve.name.lower() not in self.ec_curves:
                return (f"EC curve {public.curve.name} is not allowed (allowed: "
                        f"{', '.join(self.ec_curves)})")
            return None
        return f"key type {type(public).__name__} is not supported (need RSA or EC)"


def parse_request(text: str | bytes) -> x509.Certificate:
    """The certificate of a ``cert_request`` (PEM) or of a TLS peer (DER).

    Raises:
        CertRequestError: not a certificate.
    """
    data = text.encode() if isinstance(text, str) else text
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        # cryptography parses the subject lazily: a broken name (found by fuzzing,
        # tests/fuzz/test_fuzz_regressions.py) must be refused here, not raise
        # ValueError later in common_name().
        cert.subject  # noqa: B018
    except (ValueError, TypeError, x509.InvalidVersion) as exc:
        # InvalidVersion is no ValueError, and a name attribute of the wrong ASN.1 type
        # raises TypeError while the subject is built (both found by fuzzing).
        raise CertRequestError(f"not an X.509 certificate ({exc})") from None
    return cert


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def same_public_key(cert: x509.Certificate,
                    other: x509.Certificate | CertificatePublicKeyTypes | PrivateKey) -> bool:
    """Whether ``cert`` certifies the same public key as ``other`` (cert or key)."""
    if isinstance(other, x509.Certificate):
        public: CertificatePublicKeyTypes = other.public_key()
    elif isinstance(other, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        public = other.public_key()
    else:
        public = other
    return _spki(cert.public_key()) == _spki(public)


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``ca_cert``'s key signed ``cert`` (issuer name and signature)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def sign_request(ca_cert: x509.Certificate, ca_key: PrivateKey, request: x509.Certificate,
                 *, days: int = LEAF_VALID_DAYS, policy: KeyPolicy | None = None,
                 now: dt.datetime | None = None) -> x509.Certificate:
    """Issue the leaf certificate for a request.

    The new certificate keeps the request's subject and public key, gets ``SAN DNS:<CN>``
    (Icinga 2.13.1+ checks it against the endpoint name), basicConstraints CA:FALSE,
    EKU serverAuth+clientAuth, key identifiers, a random serial, a SHA-256 signature, and
    is valid from now - CLOCK_SKEW for ``days`` days.

    Raises:
        CertRequestError: the request has no CN, or its key is refused by ``policy``.
    """
    cn = common_name(request)
    if not cn:
        raise CertRequestError("the request's subject has no common name")
    try:
        x509.DNSName(cn)             # the CN becomes the certificate's SAN DNS name
    except ValueError as exc:
        raise CertRequestError(f"CN {cn!r} cannot be a DNS name ({exc})") from None
    try:
        public = request.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:   # a damaged or unknown key (fuzzing)
        raise CertRequestError(f"refusing to sign for CN '{cn}': unusable public key "
                               f"({exc})") from None
    reason = (policy or KeyPolicy()).refusal(public)
    if reason is not None:
        raise CertRequestError(f"refusing to sign for CN '{cn}': {reason}")
    assert isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
    start = (now or dt.datetime.now(dt.timezone.utc)) - CLOCK_SKEW
    return sign_leaf(ca_cert, ca_key, request.subject, public, cn, start,
                     start + CLOCK_SKEW + dt.timedelta(days=days))
