"""Certificate revocation lists: revoking a signed certificate, loading a CRL for the TLS
handshake.

``router ca revoke`` adds a certificate's serial to the CA's CRL (``DATA_DIR/ca/ca.crl``
by default), re-signed by the CA key each time. Nodes load it through ``[tls] crl_file``
(:func:`load_crl`): the CRL must be signed by the trust anchor, or it is refused with a
message naming the file, so a stray file cannot silently turn revocation off.

A CRL that has passed its nextUpdate makes OpenSSL fail every handshake ("CRL has
expired"); Icinga clusters fell apart that way (users.md P15, #8501/#9487). Ours are
issued with a long nextUpdate (:data:`CRL_VALID_DAYS`) and :func:`crl_days_left` lets a
node warn well before.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from router.errors import TLSSetupError
from router.pki.certs import CERT_MODE, PrivateKey, atomic_write, load_certificates
from router.pki.signing import signed_by

__all__ = ["CRL_NAME", "CRL_VALID_DAYS", "check_crl_file", "crl_days_left", "is_revoked",
           "load_crl", "revoke"]

#: Where ``router ca revoke`` writes the CRL, inside ``DATA_DIR/ca``.
CRL_NAME: Final = "ca.crl"
#: nextUpdate of the CRLs we issue, in days from the last revocation.
CRL_VALID_DAYS: Final = 365


def _read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TLSSetupError(f"{path}: CRL file does not exist") from None
    except OSError as exc:
        raise TLSSetupError(f"{path}: cannot read CRL file: {exc.strerror or exc}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise TLSSetupError(f"{path}: not a CRL ({exc})") from None


def load_crl(path: str | os.PathLike[str], ca_cert: x509.Certificate
             ) -> x509.CertificateRevocationList:
    """Load the CRL at ``path`` and check that ``ca_cert`` issued and signed it.

    Raises:
        TLSSetupError: missing, unreadable, not a CRL, or not signed by ``ca_cert``.
    """
    path = Path(path)
    crl = _read_crl(path)
    _check_signed(path, crl, ca_cert)
    return crl


def _check_signed(path: Path, crl: x509.CertificateRevocationList,
                  ca_cert: x509.Certificate) -> None:
    public = ca_cert.public_key()
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise TLSSetupError(f"{path}: the CA's key type {type(public).__name__} is not "
                            "supported (need RSA or EC)")
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(public):
        raise TLSSetupError(f"{path}: CRL is not signed by the CA "
                            f"({ca_cert.subject.rfc4514_string()})")


def _is_signed(path: Path, crl: x509.CertificateRevocationList,
               ca_cert: x509.Certificate) -> bool:
    try:
        _check_signed(path, crl, ca_cert)
    except TLSSetupError:
        return False
    return True


def check_crl_file(path: str | os.PathLike[str], ca_path: str | os.PathLike[str], *,
                   now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """The CRL of ``[tls] crl_file``, checked before OpenSSL gets it: PEM, signed by one of
    the CA certificates in ``ca_path`` and not past its nextUpdate (OpenSSL would fail
    every handshake with "CRL has expired").

    Raises:
        TLSSetupError: the CRL or the CA file is missing, unreadable or not what it
            should be, the CRL is signed by another CA, or it has expired. The message
            names the file.
    """
    path = Path(path)
    crl = _read_crl(path)
    with open(path, "rb") as fh:
        if not fh.read(64).lstrip().startswith(b"-----BEGIN"):
            raise TLSSetupError(f"{path}: CRL must be PEM (-----BEGIN X509 CRL-----), not DER")
    anchors = load_certificates(ca_path, "CA certificate")
    # A CA bundle (a rollover) may hold several anchors: the CRL must be one's.
    issuers = [ca for ca in anchors if ca.subject == crl.issuer] or anchors[:1]
    if not any(_is_signed(path, crl, ca) for ca in issuers):
        _check_signed(path, crl, issuers[0])        # raises, with the reason
    days = crl_days_left(crl, now)
    if days is not None and days < 0:
        raise TLSSetupError(
            f"{path}: CRL expired (nextUpdate {crl.next_update_utc:%Y-%m-%d %H:%M} UTC): "
            "every handshake would fail; re-issue it on the signing master with "
            "'router ca revoke' (revoking a certificate again refreshes the dates)")
    return crl


def is_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether ``cert`` (issued by the CRL's issuer) is on the list."""
    return (cert.issuer == crl.issuer
            and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None)


def crl_days_left(crl: x509.CertificateRevocationList,
                  now: dt.datetime | None = None) -> float | None:
    """Days until the CRL's nextUpdate (negative once passed); None without one."""
    next_update = crl.next_update_utc
    if next_update is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    return (next_update - now).total_seconds() / 86400.0


def revoke(ca_cert: x509.Certificate, ca_key: PrivateKey, crl_path: str | os.PathLike[str],
           certs: list[x509.Certificate], *, days: int = CRL_VALID_DAYS) -> Path:
    """Add ``certs`` to the CRL at ``crl_path`` (created when missing), re-signed.

    Revoking a certificate twice changes nothing but the CRL's dates.

    Raises:
        TLSSetupError: the existing CRL is unusable or not this CA's.
        ValueError: a certificate was not issued by this CA (revoking it here would mean
            nothing to the peers that check it).
    """
    crl_path = Path(crl_path)
    for cert in certs:
        if not signed_by(cert, ca_cert):
            raise ValueError(f"certificate {cert.subject.rfc4514_string()} (serial "
                             f"{cert.serial_number:x}) was not issued by this CA")
    now = dt.datetime.now(dt.timezone.utc)
    revoked: dict[int, x509.RevokedCertificate] = {}
    if crl_path.exists():
        for entry in load_crl(crl_path, ca_cert):
            revoked[entry.serial_number] = entry
    for cert in certs:
        if cert.serial_number not in revoked:
            revoked[cert.serial_number] = (
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(now).build())
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now)
               .next_update(now + dt.timedelta(days=days)))
    for entry in revoked.values():
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return crl_path
