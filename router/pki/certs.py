"""Certificate authority, node certificates and tickets, with Icinga 2's file layout.

Icinga keeps two directories under its data directory (``/var/lib/icinga2``):

* ``ca/ca.crt`` and ``ca/ca.key``: the CA key pair, present on the signing master only;
* ``certs/ca.crt``, ``certs/<NodeName>.crt``, ``certs/<NodeName>.key``: what the TLS
  contexts load on every node (the trust anchor and the node's own identity).

:func:`ensure_node_pki` creates that layout for a fresh router so that ``router serve``
works without any preparation; :func:`issue_node_files` hands out certificates for other
nodes (demo, tests). Differences from Icinga, on purpose:

* keys are EC P-256 by default (Icinga 2.13.6 accepts them; its own CLI makes RSA 4096,
  which takes seconds to generate); ``key_type="rsa"`` gives RSA 2048 and ``"rsa4096"``
  Icinga's own choice;
* leaf certificates also carry extendedKeyUsage serverAuth+clientAuth and the key
  identifiers, on top of Icinga's basicConstraints and ``SAN DNS:<CN>``;
* ``notBefore`` is back-dated by :data:`CLOCK_SKEW` so a peer whose clock is slightly behind
  does not see a "not yet valid" certificate.

Every file is written atomically (temporary file in the same directory, then rename):
certificates with mode 0644, private keys with 0600, as Icinga does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Union, overload

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from router.errors import TLSSetupError

__all__ = [
    "CA_VALID_DAYS",
    "CLOCK_SKEW",
    "KEY_TYPES",
    "LEAF_VALID_DAYS",
    "NodePKI",
    "PrivateKey",
    "TICKET_ITERATIONS",
    "atomic_write",
    "ca_certificate",
    "certificate_pem",
    "check_ticket",
    "create_ca",
    "ensure_node_pki",
    "fingerprint",
    "generate_key",
    "issue_certificate",
    "issue_node_files",
    "sign_leaf",
    "load_ca",
    "load_certificates",
    "load_private_key",
    "self_signed_certificate",
    "ticket",
    "write_certificate",
    "write_private_key",
]

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey]

CA_VALID_DAYS: Final = 15 * 365        # Icinga ROOT_VALID_FOR
LEAF_VALID_DAYS: Final = 397           # Icinga LEAF_VALID_FOR (since 2.13.3)
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
RSA_BITS: Final = 2048                 # Icinga uses 4096; 2048 keeps tests and demos fast
#: Key types :func:`generate_key` knows: EC P-256, RSA 2048, RSA 4096 (``icinga2 pki``'s).
KEY_TYPES: Final = ("ec", "rsa", "rsa4096")
TICKET_ITERATIONS: Final = 50_000      # Icinga PBKDF2_SHA1 in PkiUtility::GenTicket

CERT_MODE: Final = 0o644
KEY_MODE: Final = 0o600
DIR_MODE: Final = 0o700


@dataclass(frozen=True, slots=True)
class NodePKI:
    """Paths of the files the TLS contexts of one node load (Icinga's ``certs/`` layout)."""

    ca_cert: Path   # certs/ca.crt: trust anchor, also sent as the client-CA list
    cert: Path      # certs/<NodeName>.crt
    key: Path       # certs/<NodeName>.key


# -- keys and certificates ----------------------------------------------------------------

#: ``bits`` of an EC key -> its NIST curve (``generate_key("ec", bits)``).
EC_CURVES_BY_BITS: Final[dict[int, ec.EllipticCurve]] = {
    256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}


def generate_key(key_type: str = "ec", bits: int | None = None) -> PrivateKey:
    """Return a new private key.

    Args:
        key_type: ``"ec"`` (NIST P-256), ``"rsa"`` (2048 bits, e = 65537) or ``"rsa4096"``
            (what ``icinga2 pki new-cert`` makes; slow to generate and to sign with).
        bits: the RSA modulus size (2048 or more), or the EC curve size (256, 384, 521);
            None for the defaults above.

    Raises:
        ValueError: unknown ``key_type`` or unusable ``bits``.
    """
    if key_type == "ec":
        if bits is not None and bits not in EC_CURVES_BY_BITS:
            raise ValueError(f"EC keys have 256, 384 or 521 bits, not {bits}")
        return ec.generate_private_key(EC_CURVES_BY_BITS[bits or 256])
    if key_type == "rsa":
        if bits is not None and bits < 2048:
            raise ValueError(f"RSA keys need at least 2048 bits, not {bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits or RSA_BITS)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise ValueError(f"unknown key type {key_type!r} (expected one of {', '.join(KEY_TYPES)})")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _cn_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _public_key(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return key.public_key()
    return key


def ca_certificate(key: PrivateKey, *, common_name: str = "Router CA",
                   days: int = CA_VALID_DAYS) -> x509.Certificate:
    """Build a self-signed CA certificate for ``key`` (valid from now - CLOCK_SKEW).

    basicConstraints CA:TRUE (critical), keyUsage keyCertSign|cRLSign (critical),
    subjectKeyIdentifier, SHA-256 signature.
    """
    now = _now()
    name = _cn_name(common_name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def create_ca(directory: str | os.PathLike[str], *, common_name: str = "Router CA",
              key_type: str = "ec", days: int = CA_VALID_DAYS) -> tuple[Path, Path]:
    """Create a self-signed CA and write ``ca.crt`` (0644) and ``ca.key`` (0600).

    Existing files are replaced. The directory is created with mode 0700 when missing.

    Args:
        directory: where to write (Icinga: ``DataDir/ca``).
        common_name: subject CN (Icinga names its CA ``"Icinga CA"``).
        key_type: one of :data:`KEY_TYPES`.
        days: validity from now.

    Returns:
        ``(ca_cert_path, ca_key_path)``.
    """
    directory = Path(directory)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    key = generate_key(key_type)
    cert = ca_certificate(key, common_name=common_name, days=days)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    # Key first: a crash in between leaves no certificate without its key.
    write_private_key(key_path, key)
    write_certificate(cert_path, cert)
    return cert_path, key_path


def load_ca(directory: str | os.PathLike[str]) -> tuple[x509.Certificate, PrivateKey]:
    """Load ``ca.crt`` and ``ca.key`` from ``directory``.

    Raises:
        TLSSetupError: a file is missing, unreadable, not PEM, or the key does not belong
            to the certificate.
    """
    directory = Path(directory)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    cert = _load_cert(cert_path)
    key = load_private_key(key_path)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise TLSSetupError(f"{key_path}: key does not match certificate {cert_path}")
    return cert, key


@overload
def issue_certificate(
    ca_cert: x509.Certificate, ca_key: PrivateKey, common_name: str, *,
    key: PrivateKey | None = None, key_type: str = "ec",
    days: int = LEAF_VALID_DAYS, not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]: ...


@overload
def issue_certificate(
    ca_cert: x509.Certificate, ca_key: PrivateKey, common_name: str, *,
    key: PublicKey, key_type: str = "ec",
    days: int = LEAF_VALID_DAYS, not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, PublicKey]: ...


def issue_certificate(
    ca_cert: x509.Certificate, ca_key: PrivateKey, common_name: str, *,
    key: PrivateKey | PublicKey | None = None, key_type: str = "ec",
    days: int = LEAF_VALID_DAYS, not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey | PublicKey]:
    """Issue a leaf certificate for ``common_name`` signed by the CA.

    The certificate has basicConstraints CA:FALSE (critical), ``SAN DNS:<CN>`` (Icinga's
    outgoing connections check it against the endpoint name), EKU serverAuth+clientAuth,
    the key identifiers, a random 159-bit serial and a SHA-256 signature.

    Args:
        ca_cert, ca_key: the issuing CA.
        common_name: the endpoint name, becomes subject CN and SAN DNS.
        key: the subject key: a private key, or only a public key when signing somebody
            else's request (Icinga re-signs the presented certificate's public key).
            ``None`` generates a new private key of ``key_type``.
        key_type: one of :data:`KEY_TYPES`, used when ``key`` is None.
        days: validity, counted from ``not_before`` (default: now).
        not_before, not_after: explicit validity window (aware datetimes); override ``days``.

    Returns:
        ``(certificate, key)``, where ``key`` is the given or generated key.
    """
    if key is None:
        key = generate_key(key_type)
    public = _public_key(key)
    now = _now()
    start = not_before if not_before is not None else now - CLOCK_SKEW
    end = not_after if not_after is not None else (not_before or now) + dt.timedelta(days=days)
    return sign_leaf(ca_cert, ca_key, _cn_name(common_name), public, common_name,
                     start, end), key


def sign_leaf(ca_cert: x509.Certificate, ca_key: PrivateKey, subject: x509.Name,
              public: PublicKey, dns_name: str, start: dt.datetime,
              end: dt.datetime) -> x509.Certificate:
    """A leaf certificate as every node of ours and Icinga 2.13 expects it: ``subject``
    and ``public`` key, basicConstraints CA:FALSE (critical), ``SAN DNS:<dns_name>``, EKU
    serverAuth+clientAuth, the key identifiers, a random 159-bit serial, valid from
    ``start`` to ``end``, signed with SHA-256 by the CA. ``ValueError`` when ``dns_name``
    cannot be a DNS name."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())   # 159 random bits, always positive
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(_public_key(ca_key))
    return builder.add_extension(aki, critical=False).sign(ca_key, hashes.SHA256())


def self_signed_certificate(key: PrivateKey, common_name: str, *,
                            days: int = LEAF_VALID_DAYS) -> x509.Certificate:
    """The self-signed certificate a node presents when it asks for a signed one
    (``icinga2 pki new-cert --cert``): subject CN, ``SAN DNS:<CN>``, CA:FALSE."""
    now = _now()
    name = _cn_name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def certificate_pem(cert: x509.Certificate) -> str:
    """``cert`` as PEM text (what ``cert_request`` / ``cert_response`` hold)."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER encoding (Icinga's certificate request file name)."""
    return cert.fingerprint(hashes.SHA256()).hex()


# -- tickets ------------------------------------------------------------------------------

def ticket(common_name: str, salt: str) -> str:
    """Icinga's enrollment ticket for ``common_name``.

    Lowercase hex of PBKDF2-HMAC-SHA1(password = CN, salt = TicketSalt, 50 000 iterations,
    20 bytes), the value of ``icinga2 pki ticket --cn CN --salt SALT``.
    """
    digest = hashlib.pbkdf2_hmac("sha1", common_name.encode(), salt.encode(),
                                 TICKET_ITERATIONS, 20)
    return digest.hex()


def check_ticket(common_name: str, salt: str, given: str) -> bool:
    """Return whether ``given`` is the ticket for ``common_name`` (constant time, like 2.13.3+)."""
    return hmac.compare_digest(ticket(common_name, salt).encode(), given.encode())


# -- files --------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike[str], data: bytes | Iterable[bytes], mode: int,
                 *, sync_dir: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a
    rename, with ``mode`` set before anything is written (independent of the umask): a
    reader sees the old file or the whole new one, never a part. ``data`` may come in
    parts (a large file written from a thread: one join would hold the GIL as long);
    ``sync_dir`` also makes the rename itself durable (an fsync of the directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)   # explicit mode, independent of the umask
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for part in data:
                    f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_certificate(path: str | os.PathLike[str], cert: x509.Certificate) -> Path:
    """Write ``cert`` as PEM to ``path`` atomically with mode 0644."""
    return atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> Path:
    """Write ``key`` as unencrypted PKCS#8 PEM to ``path`` atomically with mode 0600."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    return atomic_write(path, data, KEY_MODE)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSSetupError(f"{path}: {what} file does not exist") from None
    except PermissionError:
        raise TLSSetupError(f"{path}: {what} file is not readable (permission denied)") from None
    except OSError as exc:
        raise TLSSetupError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None


def load_certificates(path: str | os.PathLike[str], what: str = "certificate"
                      ) -> list[x509.Certificate]:
    """Load every PEM certificate of a file (a chain or a CA bundle), in file order.

    Raises:
        TLSSetupError: missing, unreadable, or no PEM certificate in it (the message names
            the file and ``what`` it was supposed to be).
    """
    path = Path(path)
    try:
        return x509.load_pem_x509_certificates(_read(path, what))
    except ValueError as exc:
        raise TLSSetupError(f"{path}: {what} file holds no valid PEM certificate ({exc})"
                            ) from None


def _load_cert(path: Path) -> x509.Certificate:
    return load_certificates(path)[0]


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load an unencrypted PEM private key (EC or RSA).

    Raises:
        TLSSetupError: missing, unreadable, encrypted, not a key, or another key type.
    """
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except TypeError:
        raise TLSSetupError(f"{path}: encrypted private keys are not supported") from None
    except ValueError as exc:
        raise TLSSetupError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise TLSSetupError(f"{path}: unsupported key type {type(key).__name__} (need EC or RSA)")
    return key


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _copy_ca(ca_cert_path: Path, dest: Path) -> None:
    atomic_write(dest, _read(ca_cert_path, "CA certificate"), CERT_MODE)


def ensure_node_pki(data_dir: str | os.PathLike[str], node_name: str) -> NodePKI:
    """Make sure ``data_dir`` holds a usable PKI for ``node_name`` and return its paths.

    When ``certs/ca.crt``, ``certs/<node_name>.crt`` and ``certs/<node_name>.key`` all
    exist they are used as they are (nothing is checked or rewritten; the TLS contexts
    validate them). Otherwise a CA is created in ``ca/`` unless one is there, ``ca.crt``
    is copied to ``certs/``, and the node's certificate is issued (keeping an existing
    ``certs/<node_name>.key``). Calling it again changes nothing.

    Raises:
        TLSSetupError: ``ca/`` holds only half a key pair, or existing files are unusable.
    """
    data_dir = Path(data_dir)
    certs_dir, ca_dir = data_dir / "certs", data_dir / "ca"
    result = NodePKI(ca_cert=certs_dir / "ca.crt", cert=certs_dir / f"{node_name}.crt",
                     key=certs_dir / f"{node_name}.key")
    if result.ca_cert.exists() and result.cert.exists() and result.key.exists():
        return result

    if not data_dir.exists():
        # The data directory holds the node's private state: 0700 from the start, not
        # the umask's default (only the leaf of mkdir(parents=True) gets ``mode``).
        data_dir.mkdir(mode=DIR_MODE, parents=True)
        os.chmod(data_dir, DIR_MODE)
    ca_cert_path, ca_key_path = ca_dir / "ca.crt", ca_dir / "ca.key"
    if not ca_cert_path.exists() and not ca_key_path.exists():
        create_ca(ca_dir)
    ca_cert, ca_key = load_ca(ca_dir)

    certs_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _copy_ca(ca_cert_path, result.ca_cert)
    key = load_private_key(result.key) if result.key.exists() else None
    cert, key = issue_certificate(ca_cert, ca_key, node_name, key=key)
    if not result.key.exists():
        write_private_key(result.key, key)
    write_certificate(result.cert, cert)
    return result


def issue_node_files(ca_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                     node_name: str, *, key_type: str = "ec") -> tuple[Path, Path]:
    """Issue a certificate for another node and write ``<node_name>.crt/.key`` + ``ca.crt``.

    Args:
        ca_dir: directory with ``ca.crt`` and ``ca.key`` (see :func:`create_ca`).
        out_dir: destination, created (0700) when missing; existing files are replaced.
        node_name: the endpoint name (CN and SAN DNS).
        key_type: one of :data:`KEY_TYPES`.

    Returns:
        ``(cert_path, key_path)``.
    """
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key = load_ca(ca_dir)
    out_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    cert, key = issue_certificate(ca_cert, ca_key, node_name, key_type=key_type)
    cert_path, key_path = out_dir / f"{node_name}.crt", out_dir / f"{node_name}.key"
    write_private_key(key_path, key)
    write_certificate(cert_path, cert)
    if out_dir.resolve() != ca_dir.resolve():
        _copy_ca(ca_dir / "ca.crt", out_dir / "ca.crt")
    return cert_path, key_path
