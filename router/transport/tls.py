"""TLS contexts, peer identity and handshake failure reasons, the way Icinga 2 does it.

These are the contexts of the ``system`` TLS library (``router.tlslib``, which also holds
the ``bundled`` one with the same settings); the transport runs its own TLS pump over
them, so they are never wrapped around sockets. What they implement (Icinga 2.13.6
``lib/base/tlsutility.cpp``, ``lib/base/tlsstream.cpp``, protocol notes §2):

* TLS 1.2 minimum, no maximum (TLS 1.3 when both sides can), Icinga's default cipher list
  for TLS <= 1.2 (TLS 1.3 suites stay OpenSSL's), no compression, server cipher preference.
* Trust comes from one CA file, which is also sent as the client-CA list. With a CRL
  (``[tls] crl_file``) the peer's own certificate is checked against it on every
  handshake (``VERIFY_CRL_CHECK_LEAF``); a revoked one fails it (``cert_revoked``).
* The server asks for a client certificate but does not require one: a peer without a
  certificate is let in as *anonymous* (it can only enroll with ``pki::RequestCertificate``).
* Identity is the subject CN of the verified peer certificate. The client sends SNI = the
  endpoint name but does not let OpenSSL match host names; the caller compares the CN with
  the endpoint it dialled after the handshake ("Unexpected certificate common name").

One deliberate difference: Icinga's verify callback always says yes and only records the
result, so a peer with a bad certificate still completes the handshake and is treated as
anonymous. Python's ``ssl`` has no such callback; here a certificate that *is* presented
must verify (``CERT_OPTIONAL`` fails the handshake on a bad certificate), otherwise the
handshake fails with a reason from :func:`classify_handshake_error`. A peer without a
certificate still gets in.

Own certificates are checked at start-up with ``cryptography`` so that a broken setup is
reported as :class:`~router.errors.TLSSetupError` naming the file, instead of as
handshake failures on every peer later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from router.errors import TLSSetupError
from router.pki import check_crl_file, load_certificates, load_private_key

__all__ = [
    "CHAIN_WARN_BYTES",
    "FailureStreak",
    "HANDSHAKE_ERROR_TOKENS",
    "ICINGA_CIPHERS",
    "chain_size",
    "RENEW_THRESHOLD",
    "cert_is_current",
    "check_own_files",
    "certificate_days_left",
    "certificate_not_after",
    "classify_handshake_error",
    "client_context",
    "describe_handshake_error",
    "peer_certificate",
    "peer_identity",
    "server_context",
]

# Icinga DEFAULT_TLS_CIPHERS (lib/remote/apilistener.ti); applies to TLS <= 1.2 only.
ICINGA_CIPHERS: Final = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
    "AES256-GCM-SHA384:AES128-GCM-SHA256"
)

RENEW_THRESHOLD: Final = dt.timedelta(days=30)            # Icinga RENEW_THRESHOLD
FORCE_RENEWAL_BEFORE: Final = dt.datetime(2017, 1, 1, tzinfo=dt.timezone.utc)  # IsCertUptodate

#: Every value :func:`classify_handshake_error` can return (metric label values).
HANDSHAKE_ERROR_TOKENS: Final = (
    "cert_expired", "unknown_ca", "cert_not_yet_valid", "cert_revoked", "bad_certificate",
    "crl_unusable", "no_shared_cipher", "protocol_version", "eof", "timeout", "other",
)


# -- contexts -----------------------------------------------------------------------------

def _as_utc(value: dt.datetime | float | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.timezone.utc)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(value, dt.timezone.utc)


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _chains_to(leaf: x509.Certificate, intermediates: list[x509.Certificate],
               anchors: list[x509.Certificate]) -> bool:
    """Whether ``leaf`` chains to one of ``anchors`` through the given intermediates."""
    current = leaf
    for _ in range(len(intermediates) + 1):
        if any(_issued_by(current, anchor) for anchor in anchors):
            return True
        parent = next((c for c in intermediates if _issued_by(current, c)), None)
        if parent is None:
            return False
        current = parent
    return False


def check_own_files(ca: str | os.PathLike[str], cert: str | os.PathLike[str],
                    key: str | os.PathLike[str], *,
                    now: dt.datetime | float | None = None) -> None:
    """Check our own CA, certificate chain and key before loading them into OpenSSL.

    Raises:
        TLSSetupError: a file is missing or unreadable, not PEM, the key does not belong to
            the certificate, the certificate is not signed by the CA, or the certificate
            or the CA has expired. The message names the file.
    """
    when = _as_utc(now)
    anchors = load_certificates(ca, "CA certificate")
    chain = load_certificates(cert, "certificate")
    private = load_private_key(key)
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(private.public_key()):
        raise TLSSetupError(f"{key}: private key does not match the certificate in {cert}")
    if not _chains_to(leaf, chain[1:], anchors):
        raise TLSSetupError(
            f"{cert}: certificate (issuer {leaf.issuer.rfc4514_string()}) is not signed by "
            f"the CA in {ca}")
    if leaf.not_valid_after_utc < when:
        raise TLSSetupError(
            f"{cert}: certificate expired, notAfter {leaf.not_valid_after_utc.isoformat()}")
    if all(anchor.not_valid_after_utc < when for anchor in anchors):
        raise TLSSetupError(
            f"{ca}: CA certificate expired, notAfter "
            f"{anchors[0].not_valid_after_utc.isoformat()}")


def issuer_chain(ca: str | os.PathLike[str], cert: str | os.PathLike[str]
                 ) -> list[x509.Certificate]:
    """The certificates OpenSSL would send after ours: the issuers of a lone leaf in
    ``cert``, found in ``ca``, up to the self-signed root ([] when ``cert`` already holds a
    chain, or when no issuer is found)."""
    chain = load_certificates(cert, "certificate")
    if len(chain) != 1:
        return []
    pool = load_certificates(ca, "CA certificate")
    path: list[x509.Certificate] = []
    current = chain[0]
    for _ in range(len(pool)):
        parent = next((c for c in pool if c not in path and _issued_by(current, c)), None)
        if parent is None or parent == current:
            break
        path.append(parent)
        if parent.issuer == parent.subject:
            break
        current = parent
    return path


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


@contextlib.contextmanager
def chain_file(ca: str | os.PathLike[str], cert: str | os.PathLike[str], *,
               with_root: bool = True) -> Iterator[str]:
    """A file holding our certificate with its issuer chain spelled out (``cert`` itself
    when that is already what goes on the wire).

    Given a lone leaf, OpenSSL builds the chain it sends from the trust store on every
    handshake; given the chain, it sends it as is. Same bytes on the wire (the CA after
    our certificate, as Icinga sends it), about 13 % less CPU per server handshake
    (0.69 vs 0.79 ms in a memory-BIO benchmark). Both TLS libraries load certificates
    only from files, so the chain goes through a private temporary file (certificates
    only, no key), removed on exit.

    ``with_root=False`` leaves out self-signed certificates (the root CA; RFC 8446
    4.4.2 lets a sender omit the trust anchor): every peer must have the root in its own
    trust store to accept us anyway, so the copy on the wire only costs it parsing. The
    caller must then stop OpenSSL from completing the chain from the store
    (``SSL_MODE_NO_AUTO_CHAIN``), which Python's ``ssl`` cannot do.
    """
    issuers = issuer_chain(ca, cert)
    if with_root:
        if not issuers:
            yield os.fspath(cert)
            return
        chain = issuers
        pem = Path(cert).read_bytes().rstrip() + b"\n"
    else:
        own = load_certificates(cert, "certificate")
        kept = [c for c in own[1:] + issuers if not _self_signed(c)]
        if len(kept) == len(own) - 1:
            yield os.fspath(cert)          # nothing to add or leave out
            return
        chain = [own[0], *kept]
        pem = b""
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    fd, tmp = tempfile.mkstemp(prefix="router-chain-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        yield tmp
    finally:
        os.unlink(tmp)


def _load_identity(ctx: ssl.SSLContext, ca: str | os.PathLike[str],
                   cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """Load our certificate with its issuer chain spelled out (see :func:`chain_file`)."""
    with chain_file(ca, cert) as path:
        ctx.load_cert_chain(certfile=path, keyfile=os.fspath(key))


def _configure(ctx: ssl.SSLContext, ca: str | os.PathLike[str], cert: str | os.PathLike[str],
               key: str | os.PathLike[str], crl: str | os.PathLike[str] | None
               ) -> ssl.SSLContext:
    check_own_files(ca, cert, key)
    if crl is not None:
        check_crl_file(crl, ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.set_ciphers(ICINGA_CIPHERS)
    except ssl.SSLError as exc:  # pragma: no cover - only with a crippled OpenSSL
        raise TLSSetupError(f"no usable cipher in the Icinga cipher list: {exc}") from None
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"{ca}: cannot load CA certificate: {exc}") from None
    if crl is not None:
        # Every handshake checks the peer's certificate (not its issuers) against the CRL.
        try:
            ctx.load_verify_locations(cafile=os.fspath(crl))
        except (ssl.SSLError, OSError) as exc:
            raise TLSSetupError(f"{crl}: cannot load CRL: {exc}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    try:
        _load_identity(ctx, ca, cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"{cert} / {key}: cannot load certificate and key: {exc}") from None
    return ctx


def server_context(ca: str | os.PathLike[str], cert: str | os.PathLike[str],
                   key: str | os.PathLike[str], crl: str | os.PathLike[str] | None = None
                   ) -> ssl.SSLContext:
    """Context for accepted connections.

    A client certificate is requested (the CA is sent as the client-CA list) but optional:
    without one the handshake succeeds and :func:`peer_identity` returns None (anonymous).
    A client certificate that is presented must verify against ``ca`` and, given a
    ``crl`` (PEM, signed by the CA), must not be on it.

    Raises:
        TLSSetupError: see :func:`check_own_files` and
            :func:`router.pki.check_crl_file`.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # No session resumption is ever used by Icinga or by us: don't mint TLS 1.3 tickets.
    ctx.num_tickets = 0
    return _configure(ctx, ca, cert, key, crl)


def client_context(ca: str | os.PathLike[str], cert: str | os.PathLike[str],
                   key: str | os.PathLike[str], crl: str | os.PathLike[str] | None = None
                   ) -> ssl.SSLContext:
    """Context for outgoing connections.

    The server certificate must verify against ``ca``; host names are *not* checked by
    OpenSSL. Pass ``server_hostname=<endpoint name>`` to ``wrap_bio`` (it becomes SNI) and
    compare :func:`peer_identity` with the endpoint name after the handshake. Given a
    ``crl``, a revoked server certificate fails the handshake.

    Raises:
        TLSSetupError: see :func:`check_own_files` and
            :func:`router.pki.check_crl_file`.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return _configure(ctx, ca, cert, key, crl)


# -- peers --------------------------------------------------------------------------------

def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """Subject CN of the peer certificate, None when the peer sent none.

    Only call this after a successful handshake: with our contexts a presented certificate
    has then been verified. With several CN attributes the first one counts, as in Icinga
    (``X509_NAME_get_text_by_NID``). A certificate without a CN also gives None.
    """
    info = ssl_object.getpeercert()
    if not info:
        return None
    # typeshed types every value of the dict as one union of all shapes; "subject" is
    # always the sequence of RDNs, each a sequence of (attribute, value) pairs.
    subject: tuple[tuple[tuple[str, str], ...], ...] = info.get(  # type: ignore[assignment]
        "subject", ())
    for rdn in subject:
        for attr, value in rdn:
            if attr == "commonName":
                return value
    return None


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """DER of the peer certificate, None when the peer sent none.

    ``pki::RequestCertificate`` falls back to it when ``cert_request`` is empty.
    """
    return ssl_object.getpeercert(binary_form=True)


# -- handshake failures -------------------------------------------------------------------

# X509_V_ERR_* codes (OpenSSL include/openssl/x509_vfy.h) → token.
_VERIFY_CODES: Final = {
    2: "unknown_ca",            # UNABLE_TO_GET_ISSUER_CERT
    # A different CA with the same subject (every Icinga CA is called "Icinga CA" and
    # Icinga's certificates have no authorityKeyIdentifier): the issuer is found by name
    # but the signature does not match. The peer then receives a decrypt_error alert.
    7: "unknown_ca",            # CERT_SIGNATURE_FAILURE
    9: "cert_not_yet_valid",    # CERT_NOT_YET_VALID
    10: "cert_expired",         # CERT_HAS_EXPIRED
    18: "unknown_ca",           # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown_ca",           # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown_ca",           # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown_ca",           # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "cert_revoked",         # CERT_REVOKED
    # Our own [tls] crl_file cannot be used for this peer (not the peer's fault): no CRL
    # of the peer's issuer, or ours is out of its validity window.
    3: "crl_unusable",          # UNABLE_TO_GET_CRL
    8: "crl_unusable",          # CRL_SIGNATURE_FAILURE
    11: "crl_unusable",         # CRL_NOT_YET_VALID
    12: "crl_unusable",         # CRL_HAS_EXPIRED
}

# SSLError.reason (OpenSSL reason string, alerts received from the peer included) → token.
_REASONS: Final = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "cert_expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "cert_revoked",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",   # also sent for "not yet valid"
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "bad_certificate",
    # What OpenSSL answers to CERT_SIGNATURE_FAILURE (see code 7 above).
    "TLSV1_ALERT_DECRYPT_ERROR": "unknown_ca",
    "CERTIFICATE_VERIFY_FAILED": "bad_certificate",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_CIPHERS_AVAILABLE": "no_shared_cipher",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no_shared_cipher",
    "NO_SUITABLE_KEY_SHARE": "no_shared_cipher",
    # What a server sends when it finds no common cipher suite or group.
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no_shared_cipher",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "no_shared_cipher",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "VERSION_TOO_HIGH": "protocol_version",
    "WRONG_SSL_VERSION": "protocol_version",
    # The peer does not speak TLS at all (plain JSON-RPC, HTTP, a port scanner).
    "WRONG_VERSION_NUMBER": "protocol_version",
    "HTTP_REQUEST": "protocol_version",
    "HTTPS_PROXY_REQUEST": "protocol_version",
    "UNEXPECTED_EOF_WHILE_READING": "eof",
    "UNEXPECTED_EOF": "eof",
}


def classify_handshake_error(exc: BaseException) -> str:
    """Map a TLS handshake exception to a stable token (one of :data:`HANDSHAKE_ERROR_TOKENS`).

    Works for both sides: the side that verifies gets ``ssl.SSLCertVerificationError``
    (classified by ``verify_code``), the other side gets the alert it was sent
    (``SSLError.reason``, e.g. ``TLSV1_ALERT_UNKNOWN_CA``), which maps to the same token.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        if code in _VERIFY_CODES:
            return _VERIFY_CODES[code]
        message = (getattr(exc, "verify_message", None) or "").lower()
        if "expired" in message:
            return "cert_expired"
        if "not yet valid" in message:
            return "cert_not_yet_valid"
        if "revoked" in message:
            return "cert_revoked"
        if "issuer" in message or "self-signed" in message or "self signed" in message:
            return "unknown_ca"
        return "bad_certificate"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError, ConnectionError)):
        return "eof"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        if reason in _REASONS:
            return _REASONS[reason]
        if reason is None and "EOF" in str(exc):
            return "eof"
    return "other"


def describe_handshake_error(exc: BaseException) -> str:
    """Human text for the log line about a failed handshake (without the peer address)."""
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        message = getattr(exc, "verify_message", None) or str(exc)
        return f"peer certificate rejected: {message} (X509 error {code})"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError, ConnectionError)):
        return f"connection closed during the TLS handshake ({exc.__class__.__name__})"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        if reason and reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
            alert = reason.split("_ALERT_", 1)[1].lower().replace("_", " ")
            return f"peer refused the handshake: alert '{alert}'"
        text = reason.lower().replace("_", " ") if reason else str(exc)
        return f"TLS handshake failed: {text}"
    return f"TLS handshake failed: {exc.__class__.__name__}: {exc}"


# -- self-healing ---------------------------------------------------------------------------

#: Failure reasons that say nothing about our own TLS state: the peer went away or was
#: slow (port scanners, load balancer probes, a network blip).
NOISE_REASONS: Final = frozenset({"eof", "timeout"})


class FailureStreak:
    """When identical handshake failures pile up, rebuild the TLS context from disk.

    Icinga users see handshakes fail with the same error ("excessive message size"),
    every 10 s, to every peer, until the daemon is restarted (users.md P1): stale TLS
    state in the process, not bad certificates. Here a streak is ``threshold``
    consecutive failures with one reason (other than :data:`NOISE_REASONS`), from at
    least ``min_peers`` different addresses, within ``window`` seconds, with no successful
    handshake in between; it calls ``on_streak(reason)``, which builds fresh contexts
    from the files (renewed certificates included). At most once per ``cooldown``
    seconds. Pure: the caller passes the clock.
    """

    def __init__(self, threshold: int = 20, min_peers: int = 3, window: float = 60.0,
                 cooldown: float = 300.0) -> None:
        self.threshold = threshold
        self.min_peers = min_peers
        self.window = window
        self.cooldown = cooldown
        #: Called with the reason when a streak is complete (the node sets it).
        self.on_streak: Callable[[str], None] | None = None
        self.reason: str | None = None
        self.count = 0
        self.peers: set[str] = set()
        self.started = 0.0
        self.last_trigger: float | None = None
        self.triggers = 0

    def failed(self, reason: str, peer: str, now: float) -> bool:
        """A failed handshake; True (and ``on_streak`` called) when a streak completes."""
        if reason in NOISE_REASONS:
            return False
        if reason != self.reason or now - self.started > self.window:
            self.reason, self.count, self.started = reason, 0, now
            self.peers = set()
        self.count += 1
        if len(self.peers) < self.min_peers:
            self.peers.add(peer)
        if self.count < self.threshold or len(self.peers) < self.min_peers:
            return False
        if self.last_trigger is not None and now - self.last_trigger < self.cooldown:
            return False
        self.last_trigger = now
        self.triggers += 1
        self.succeeded()
        if self.on_streak is not None:
            self.on_streak(reason)
        return True

    def succeeded(self) -> None:
        """A handshake worked: the context is fine, the streak is over."""
        self.reason, self.count = None, 0
        self.peers = set()


# -- chain size ------------------------------------------------------------------------------

#: A certificate chain we send above this many bytes is logged as a warning at load: a
#: peer with a small receive limit fails such handshakes ("excessive message size").
CHAIN_WARN_BYTES: Final = 16 * 1024


def chain_size(ca: str | os.PathLike[str], cert: str | os.PathLike[str]) -> tuple[int, int]:
    """(certificates, DER bytes) of the chain a handshake sends: ours, its intermediates
    and the issuers found in ``ca``."""
    own = load_certificates(cert, "certificate")
    certs = own + issuer_chain(ca, cert)
    return len(certs), sum(len(c.public_bytes(serialization.Encoding.DER)) for c in certs)


# -- certificate dates --------------------------------------------------------------------

def _parse_cert(data: bytes | str | x509.Certificate) -> x509.Certificate:
    if isinstance(data, x509.Certificate):
        return data
    if isinstance(data, str):
        data = data.encode()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificate_not_after(path_or_pem: str | os.PathLike[str] | bytes | x509.Certificate
                          ) -> dt.datetime:
    """notAfter (aware UTC) of a certificate given as a file path, PEM/DER bytes or PEM str.

    Raises:
        TLSSetupError: the file is missing or unreadable or holds no certificate.
        ValueError: the bytes are not a certificate.
    """
    if isinstance(path_or_pem, (bytes, x509.Certificate)):
        cert = _parse_cert(path_or_pem)
    elif isinstance(path_or_pem, str) and "-----BEGIN" in path_or_pem:
        cert = _parse_cert(path_or_pem)
    else:
        cert = load_certificates(path_or_pem)[0]
    return cert.not_valid_after_utc


def certificate_days_left(path: str | os.PathLike[str] | bytes,
                          now: dt.datetime | float | None = None) -> float:
    """Days until notAfter (negative once expired). ``now`` is a datetime or a Unix time."""
    return (certificate_not_after(path) - _as_utc(now)).total_seconds() / 86400.0


_ca_cache: dict[str, tuple[int, int, list[x509.Certificate]]] = {}


def _load_ca_cached(ca_path: str | os.PathLike[str]) -> list[x509.Certificate]:
    # Called once per pki::RequestCertificate: reparse only when the file changed.
    path = os.fspath(ca_path)
    st = os.stat(path)
    cached = _ca_cache.get(path)
    if cached and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
        return cached[2]
    certs = load_certificates(Path(path), "CA certificate")
    _ca_cache[path] = (st.st_mtime_ns, st.st_size, certs)
    return certs


def cert_is_current(pem_or_der: bytes | str | x509.Certificate,
                    ca_path: str | os.PathLike[str],
                    now: dt.datetime | float | None = None,
                    renew_before: dt.timedelta = RENEW_THRESHOLD) -> bool:
    """Icinga's "signed by our CA and up to date" test for ``pki::RequestCertificate``.

    True when the certificate verifies against the CA in ``ca_path`` at ``now``
    (signature, both validity windows), its notBefore is not before 2017-01-01 (Icinga
    forces renewal of older ones), and its notAfter is at least ``renew_before`` (``[pki]
    renew_before_days``, Icinga's fixed 30 days by default) after ``now``.
    Unparseable input gives False.

    Raises:
        TLSSetupError: ``ca_path`` cannot be read.
    """
    when = _as_utc(now)
    try:
        cert = _parse_cert(pem_or_der)
    except ValueError:
        return False
    anchors = _load_ca_cached(ca_path)
    issuer = next((ca for ca in anchors if _issued_by(cert, ca)), None)
    if issuer is None:
        return False
    if not (issuer.not_valid_before_utc <= when <= issuer.not_valid_after_utc):
        return False
    if not (cert.not_valid_before_utc <= when <= cert.not_valid_after_utc):
        return False
    return (cert.not_valid_before_utc >= FORCE_RENEWAL_BEFORE
            and cert.not_valid_after_utc >= when + renew_before)
