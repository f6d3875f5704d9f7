"""Throwaway PKIs for tests.

``make_test_pki(tmp_path, ["a", "b"])`` writes a CA and one certificate per name into
``tmp_path`` (Icinga file names: ``ca.crt``, ``ca.key``, ``<name>.crt``, ``<name>.key``).
Two CAs (ours and "another" one) and the keys are generated once per process and shared:
EC keys are cheap, RSA keys are not, and tests never depend on keys being unique.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from router import pki

__all__ = ["TestPKI", "make_test_pki"]

# key_type -> (cert, key) of our CA and of the other CA; key_type -> one leaf key.
_CAS: dict[tuple[str, str], tuple[x509.Certificate, pki.PrivateKey]] = {}
_LEAF_KEYS: dict[str, pki.PrivateKey] = {}


def _ca(which: str, key_type: str) -> tuple[x509.Certificate, pki.PrivateKey]:
    if (which, key_type) not in _CAS:
        key = pki.generate_key(key_type)
        cert = pki.ca_certificate(key, common_name=f"Test CA {which}", days=3650)
        _CAS[which, key_type] = (cert, key)
    return _CAS[which, key_type]


def _leaf_key(key_type: str) -> pki.PrivateKey:
    if key_type not in _LEAF_KEYS:
        _LEAF_KEYS[key_type] = pki.generate_key(key_type)
    return _LEAF_KEYS[key_type]


@dataclass(frozen=True)
class TestPKI:
    """Paths of a PKI written by :func:`make_test_pki`."""

    __test__ = False            # not a test class, despite the name

    directory: Path
    ca_cert: Path               # our CA (trust anchor for everything in ``names``)
    ca_key: Path
    other_ca_cert: Path         # the CA that signed ``other_ca_names``

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def make_test_pki(tmp_path: Path, names: Iterable[str], *, other_ca_names: Iterable[str] = (),
                  expired_names: Iterable[str] = (), not_yet_valid_names: Iterable[str] = (),
                  key_type: str = "ec") -> TestPKI:
    """Write a CA and leaf certificates (SAN DNS:<name>) into ``tmp_path``.

    Args:
        names: certificates signed by our CA, valid now.
        other_ca_names: valid certificates signed by a different CA.
        expired_names: signed by our CA, notAfter one day in the past.
        not_yet_valid_names: signed by our CA, notBefore one day in the future.
        key_type: ``"ec"`` or ``"rsa"`` for the CAs and the leaves.

    A name may appear in one list only; every listed name gets ``<name>.crt/.key``.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca("main", key_type)
    other_cert, other_key = _ca("other", key_type)
    result = TestPKI(directory=tmp_path, ca_cert=tmp_path / "ca.crt", ca_key=tmp_path / "ca.key",
                     other_ca_cert=tmp_path / "other-ca.crt")
    pki.write_certificate(result.ca_cert, ca_cert)
    pki.write_private_key(result.ca_key, ca_key)
    pki.write_certificate(result.other_ca_cert, other_cert)

    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    plan: list[tuple[str, x509.Certificate, pki.PrivateKey, dict]] = []
    plan += [(n, ca_cert, ca_key, {}) for n in names]
    plan += [(n, other_cert, other_key, {}) for n in other_ca_names]
    plan += [(n, ca_cert, ca_key, {"not_before": now - 30 * day, "not_after": now - day})
             for n in expired_names]
    plan += [(n, ca_cert, ca_key, {"not_before": now + day, "not_after": now + 30 * day})
             for n in not_yet_valid_names]
    seen = [n for n, *_ in plan]
    if len(seen) != len(set(seen)):
        raise ValueError(f"a name appears in more than one list: {seen}")
    key = _leaf_key(key_type)
    for name, issuer_cert, issuer_key, window in plan:
        cert, _ = pki.issue_certificate(issuer_cert, issuer_key, name, key=key, **window)
        pki.write_certificate(result.cert(name), cert)
        pki.write_private_key(result.key(name), key)
    return result
