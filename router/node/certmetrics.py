"""The enrollment metrics: what happened to certificate requests, how many are pending,
and when our own and each connected peer's certificate expires.

``router_csr_requests_total{result}``, ``router_csr_pending`` and
``router_cert_expiry_seconds{endpoint}`` (docs/pki.md "Metrics"). Certificates are parsed
once per connection and once per change of our certificate file, not per scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from cryptography import x509

from router import pki
from router.ops.metrics import LabeledCounter, MetricFamily, family

if TYPE_CHECKING:  # pragma: no cover
    from router.node.stats import Connection

__all__ = ["CertMetrics", "RESULTS"]

#: Values of ``router_csr_requests_total{result}``.
RESULTS: Final = ("signed", "pending", "forwarded", "invalid_ticket", "declined", "refused")


class CertMetrics:
    """Counters and expiry gauges of one node's enrollment."""

    def __init__(self, own_cert_path: Callable[[], str]) -> None:
        self._own_cert_path = own_cert_path
        #: router_csr_requests_total{result}
        self.requests = LabeledCounter(("result",))
        #: connection -> notAfter (Unix time) of its certificate, for the expiry gauge
        self._expiry: dict[Connection, float] = {}
        #: (mtime of our certificate file, its notAfter)
        self._own_expiry: tuple[int, float] | None = None

    def count(self, outcome: str) -> None:
        self.requests.inc((outcome,))

    def own_changed(self) -> None:
        """Our certificate was replaced: read its notAfter again at the next scrape."""
        self._own_expiry = None

    def forget_closed(self, open_connections: set[Connection]) -> None:
        for conn in [c for c in self._expiry if c not in open_connections]:
            del self._expiry[conn]

    def _not_after(self, conn: Connection) -> float | None:
        if conn not in self._expiry:
            der = conn.peer_certificate_der()
            if der is None:
                return None
            try:
                self._expiry[conn] = x509.load_der_x509_certificate(der) \
                    .not_valid_after_utc.timestamp()
            except ValueError:
                return None
        return self._expiry[conn]

    def _own_not_after(self) -> float | None:
        path = self._own_cert_path()
        try:
            mtime = os.stat(path).st_mtime_ns
            if self._own_expiry is None or self._own_expiry[0] != mtime:
                self._own_expiry = (mtime, pki.load_certificates(path)[0]
                                    .not_valid_after_utc.timestamp())
        except Exception:  # noqa: BLE001 - OSError, TLSSetupError: no sample then
            return None
        return self._own_expiry[1]

    def families(self, own_name: str, connections: Mapping[str, Connection],
                 pending: int) -> list[MetricFamily]:
        """``router_csr_requests_total``, ``router_csr_pending``,
        ``router_cert_expiry_seconds`` (our own certificate and each connected peer's)."""
        now = time.time()
        expiry = []
        own = self._own_not_after()
        if own is not None:
            expiry.append(({"endpoint": own_name}, own - now))
        for name, conn in sorted(connections.items()):
            not_after = self._not_after(conn)
            if not_after is not None:
                expiry.append(({"endpoint": name}, not_after - now))
        return [
            family("router_csr_requests_total", [
                ({"result": r}, self.requests.get((r,))) for r in RESULTS]),
            family("router_csr_pending", [({}, pending)]),
            family("router_cert_expiry_seconds", expiry),
        ]
