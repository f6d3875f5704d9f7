"""The certificate request store: ``DATA_DIR/certificate-requests/``, Icinga's layout.

A node that cannot sign a request at once (no ticket, no CA key, a satellite) keeps it
as ``<fingerprint>.json`` with ``{"cert_request": PEM, "ticket": str}``; once a signed
certificate is known for it, ``"cert_response": PEM`` is added and handed out on the
requester's next request. ``router ca remove`` renames the file to
``<fingerprint>.removed`` (Icinga answers "declined by administrator" from then on),
``router ca restore`` renames it back. The fingerprint is the lowercase hex SHA-256 of the
request certificate's DER.

Files are written atomically (temporary file, rename) with mode 0600 in a 0700 directory:
a request may hold a ticket. A file that cannot be read or parsed is skipped and reported
in :attr:`Listing.corrupt`, never raised while listing, so one bad file cannot stop a node
or ``router ca list``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from router.errors import RouterError
from router.pki.certs import DIR_MODE, KEY_MODE, atomic_write

__all__ = [
    "CertRequest",
    "CertRequestError",
    "FINGERPRINT_PATTERN",
    "Listing",
    "REQUESTS_DIR",
    "RequestStore",
    "common_name",
    "valid_fingerprint",
]

REQUESTS_DIR: Final = "certificate-requests"
#: A SHA-256 fingerprint as Icinga writes it (lowercase hex, 64 characters). Icinga only
#: checks ``^[0-9a-f]+$``; anything else could not have come from a real request.
FINGERPRINT_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
#: Icinga deletes request files older than this (its hourly cleanup timer).
MAX_AGE_SECONDS: Final = 7 * 86400


class CertRequestError(RouterError):
    """A request file is missing, unreadable or malformed, or a fingerprint is invalid."""


def valid_fingerprint(value: object) -> bool:
    """Whether ``value`` is a 64-character lowercase hex SHA-256 fingerprint."""
    return isinstance(value, str) and FINGERPRINT_PATTERN.fullmatch(value) is not None


def common_name(cert: x509.Certificate) -> str:
    """The first subject CN (as Icinga's ``GetCertificateCN``), "" without one."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return ""
    value = names[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class CertRequest:
    """One stored request."""

    fingerprint: str
    cert_request: str
    """PEM of the certificate the requester presented (normally self-signed)."""
    ticket: str
    cert_response: str | None
    """PEM of the signed certificate, once known."""
    mtime: float
    removed: bool = False

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_request.encode())

    @property
    def common_name(self) -> str:
        return common_name(self.certificate)

    @property
    def signed(self) -> bool:
        return bool(self.cert_response)


@dataclass(slots=True)
class Listing:
    """What :meth:`RequestStore.list` found: the readable requests and the bad files."""

    requests: list[CertRequest] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


class RequestStore:
    """The files under ``DATA_DIR/certificate-requests``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(data_dir) / REQUESTS_DIR

    # -- paths ---------------------------------------------------------------------------

    def _checked(self, fingerprint: str) -> str:
        if not valid_fingerprint(fingerprint):
            raise CertRequestError(f"invalid certificate fingerprint {fingerprint!r} "
                                   "(expected 64 lowercase hex characters)")
        return fingerprint

    def path(self, fingerprint: str) -> Path:
        return self.directory / f"{self._checked(fingerprint)}.json"

    def removed_path(self, fingerprint: str) -> Path:
        return self.directory / f"{self._checked(fingerprint)}.removed"

    def stamp(self) -> int:
        """The directory's mtime (ns), 0 when missing: it changes whenever a request file
        is created, renamed or deleted, so a node can notice what ``router ca`` did."""
        try:
            return self.directory.stat().st_mtime_ns
        except OSError:
            return 0

    # -- reading -------------------------------------------------------------------------

    def _read(self, path: Path, fingerprint: str, removed: bool) -> CertRequest:
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise CertRequestError(f"{path}: no such request") from None
        except OSError as exc:
            raise CertRequestError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            data: Any = json.loads(raw)
        except ValueError as exc:
            raise CertRequestError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CertRequestError(f"{path}: not a JSON object")
        pem = data.get("cert_request")
        if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
            raise CertRequestError(f"{path}: 'cert_request' is not a PEM certificate")
        try:
            x509.load_pem_x509_certificate(pem.encode()).subject  # noqa: B018 - lazy
        except (ValueError, TypeError, x509.InvalidVersion) as exc:   # see parse_request
            raise CertRequestError(f"{path}: 'cert_request' does not parse ({exc})") from None
        ticket = data.get("ticket", "")
        response = data.get("cert_response")
        if response is not None and not isinstance(response, str):
            raise CertRequestError(f"{path}: 'cert_response' is not a string")
        return CertRequest(fingerprint=fingerprint, cert_request=pem,
                           ticket=ticket if isinstance(ticket, str) else "",
                           cert_response=response or None, mtime=mtime, removed=removed)

    def get(self, fingerprint: str) -> CertRequest | None:
        """The pending or signed request, None when there is none.

        Raises:
            CertRequestError: invalid fingerprint, or the file is unreadable or malformed.
        """
        path = self.path(fingerprint)
        if not path.exists():
            return None
        return self._read(path, fingerprint, False)

    def get_removed(self, fingerprint: str) -> CertRequest | None:
        path = self.removed_path(fingerprint)
        if not path.exists():
            return None
        return self._read(path, fingerprint, True)

    def is_removed(self, fingerprint: str) -> bool:
        return self.removed_path(fingerprint).exists()

    def _files(self) -> Iterator[tuple[Path, str, bool]]:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if not dot or ext not in ("json", "removed") or not valid_fingerprint(stem):
                continue
            yield Path(entry.path), stem, ext == "removed"

    def list(self, *, include_removed: bool = False) -> Listing:
        """Every readable request (oldest first); unreadable files go to ``corrupt``."""
        listing = Listing()
        for path, fingerprint, removed in self._files():
            if removed and not include_removed:
                continue
            try:
                listing.requests.append(self._read(path, fingerprint, removed))
            except CertRequestError as exc:
                listing.corrupt.append((path, str(exc)))
        listing.requests.sort(key=lambda r: (r.mtime, r.fingerprint))
        return listing

    def pending_count(self) -> int:
        """Stored requests without a signed certificate (corrupt files not counted)."""
        return sum(1 for r in self.list().requests if not r.signed)

    # -- writing -------------------------------------------------------------------------

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, sort_keys=True).encode(), KEY_MODE)

    def save_pending(self, fingerprint: str, cert_request: str, ticket: str) -> CertRequest:
        """Store ``{cert_request, ticket}`` (a response already stored is kept)."""
        path = self.path(fingerprint)
        data: dict[str, Any] = {"cert_request": cert_request, "ticket": ticket}
        try:
            old = self.get(fingerprint)
        except CertRequestError:
            old = None                  # a corrupt file is replaced by the new request
        if old is not None and old.cert_response:
            data["cert_response"] = old.cert_response
        self._write(path, data)
        return CertRequest(fingerprint, cert_request, ticket, data.get("cert_response"),
                           time.time())

    def set_response(self, fingerprint: str, cert_response: str,
                     cert_request: str | None = None) -> bool:
        """Add the signed certificate to a stored request.

        When there is no request file, one is written only if ``cert_request`` is given
        (the signer stores what it signed); otherwise nothing happens and False is
        returned (Icinga: an update for a request we never saw is dropped).

        Raises:
            CertRequestError: the existing file is unreadable or malformed.
        """
        old = self.get(fingerprint)
        if old is None:
            if cert_request is None:
                return False
            data: dict[str, Any] = {"cert_request": cert_request, "ticket": ""}
        else:
            data = {"cert_request": old.cert_request, "ticket": old.ticket}
        data["cert_response"] = cert_response
        self._write(self.path(fingerprint), data)
        return True

    def remove(self, fingerprint: str) -> None:
        """Decline a request: ``<fp>.json`` becomes ``<fp>.removed``.

        Raises:
            CertRequestError: there is no such request.
        """
        path = self.path(fingerprint)
        if not path.exists():
            if self.removed_path(fingerprint).exists():
                raise CertRequestError(f"request {fingerprint} is already removed")
            raise CertRequestError(f"no certificate request {fingerprint} in {self.directory}")
        os.replace(path, self.removed_path(fingerprint))

    def restore(self, fingerprint: str) -> None:
        """Undo :meth:`remove`.

        Raises:
            CertRequestError: there is no removed request with that fingerprint.
        """
        removed = self.removed_path(fingerprint)
        if not removed.exists():
            raise CertRequestError(f"no removed certificate request {fingerprint} in "
                                   f"{self.directory}")
        os.replace(removed, self.path(fingerprint))

    def prune(self, now: float | None = None, max_age: float = MAX_AGE_SECONDS) -> int:
        """Delete request files (pending, signed or removed) older than ``max_age``."""
        now = time.time() if now is None else now
        deleted = 0
        for path, _fp, _removed in list(self._files()):
            try:
                if now - path.stat().st_mtime > max_age:
                    path.unlink()
                    deleted += 1
            except OSError:
                continue
        return deleted
