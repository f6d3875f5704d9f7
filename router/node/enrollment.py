"""Certificate enrollment: ``pki::RequestCertificate`` and ``pki::UpdateCertificate``.

Answered the way Icinga 2.13 answers them (icinga-protocol.md §7): the node whose data
directory holds ``ca/ca.crt`` and ``ca/ca.key`` is the *signer*. A request whose
certificate is ours and current gets status 1 "valid and uptodate"; one with a stored
signed certificate gets it (status 0); a declined one (``<fp>.removed``) status 1; on the
signer a valid ticket (or a certificate of ours that is due for renewal) is signed at once
(status 0, also pushed as ``pki::UpdateCertificate``), a wrong ticket is refused without
storing anything, and no ticket makes it *pending* (status 2): stored under
``DATA_DIR/certificate-requests`` for ``router ca sign``. A node without the CA key
stores it and forwards it to its zone and parent; the signed certificate comes back as
``pki::UpdateCertificate`` with ``fingerprint_request``, is stored beside the request and
handed to the requester (now, if it is still connected, else on its next request).

Where we differ from Icinga, on purpose:
- ``pki::UpdateCertificate`` is accepted only from an endpoint of our parent zone or our
  HA peer (Icinga also takes it from anonymous peers);
- a certificate for our own name is installed only if it certifies *our* key and chains
  to the CA we already trust (our ``ca.crt`` is never replaced by an update); otherwise
  it is refused and logged;
- anonymous requests are rate-limited per address and the pending requests are capped
  (users.md P13/P16: enrollment must not be a way to fill a disk or a CPU);
- a pending anonymous requester is not disconnected at once (Icinga does, #10330 in
  users.md P14): it keeps its connection until the enrollment timeout, so a certificate
  signed upstream meanwhile reaches it directly;
- what ``router ca sign`` writes is picked up by the running node (the request
  directory's mtime, checked every second) and delivered to a connected requester.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography import x509

from router import pki
from router.node.context import NodeContext
from router.config import TLSConfig
from router.errors import TLSSetupError
from router.ops.metrics import LabeledCounter, MetricFamily, family
from router.protocol import jsonrpc, netstring
from router.routing import Relation
from router.transport import tls, tlslib

if TYPE_CHECKING:  # pragma: no cover
    from router.node.stats import Connection

log = logging.getLogger("router.node")

REQUEST: Final = "pki::RequestCertificate"
UPDATE: Final = "pki::UpdateCertificate"
#: Values of ``router_csr_requests_total{result}``.
RESULTS: Final = ("signed", "pending", "forwarded", "invalid_ticket", "declined", "refused")
#: Environment variable with the ticket salt, used when neither the command line nor
#: ``[pki] ticket_salt`` sets one.
SALT_ENV: Final = "ROUTER_TICKET_SALT"
#: Who may send us ``pki::UpdateCertificate``: our parent zone, and the HA peer of our
#: zone (in a two-master zone only one master holds the CA key; the other forwards to it,
#: and Icinga takes the answer from it as well). Never anonymous peers or children.
SIGNERS: Final = frozenset({Relation.PARENT, Relation.PEER})
#: Expensive steps (ticket check, signature) for anonymous requests, node-wide: this many
#: per second on average, bursts of EXPENSIVE_BURST. 10/s bounds ticket checks to about
#: 110 ms of loop time per second however many addresses send them.
EXPENSIVE_PER_SECOND: Final = 10.0
EXPENSIVE_BURST: Final = 20.0
PRUNE_INTERVAL: Final = 3600.0
#: Our own certificate is checked for renewal this often (Icinga RENEW_INTERVAL), and
#: whenever a parent connects.
RENEW_INTERVAL: Final = 86400.0
#: How often the request directory is looked at (``router ca sign`` on a running node).
TICK: Final = 1.0


def ticket_path(tls_cfg: TLSConfig) -> Path:
    """``certs/ticket`` beside our certificate (Icinga: ``DataDir/certs/ticket``)."""
    return Path(tls_cfg.cert).parent / "ticket"


def is_enrolling(tls_cfg: TLSConfig) -> bool:
    """Whether we wait for our first signed certificate: a ticket is stored and our
    certificate is self-signed (``router serve --ticket``, docs/pki.md)."""
    if not ticket_path(tls_cfg).exists():
        return False
    try:
        own = pki.load_certificates(tls_cfg.cert)[0]
    except Exception:  # noqa: BLE001 - TLSSetupError: then the normal checks say why
        return False
    return own.issuer == own.subject and pki.signed_by(own, own)


def prepare_self_enrollment(tls_cfg: TLSConfig, name: str, ticket: str,
                            key_type: str = "ec") -> bool:
    """Store ``ticket`` and, when we have no certificate yet, make a key and a
    self-signed certificate for ``name`` (what ``icinga2 node setup --ticket`` leaves).
    The CA certificate must be there already: it is how we know our parent. True when a
    key was made."""
    ca = Path(tls_cfg.ca)
    if not ca.exists():
        raise TLSSetupError(f"{ca} does not exist: copy the CA certificate of the "
                            "cluster there first (docs/pki.md)")
    pki.load_certificates(ca, "CA certificate")
    cert, key = Path(tls_cfg.cert), Path(tls_cfg.key)
    created = False
    if not cert.exists() and not key.exists():
        cert.parent.mkdir(mode=pki.DIR_MODE, parents=True, exist_ok=True)
        private = pki.generate_key(key_type)
        pki.write_private_key(key, private)
        pki.write_certificate(cert, pki.self_signed_certificate(private, name))
        created = True
    path = ticket_path(tls_cfg)
    path.parent.mkdir(mode=pki.DIR_MODE, parents=True, exist_ok=True)
    pki.atomic_write(path, (ticket.strip() + "\n").encode(), pki.KEY_MODE)  # 0600 from the start
    return created


def enrolling_contexts(tls_cfg: TLSConfig) -> tuple[tlslib.TLSLibrary, tlslib.TLSLibrary]:
    """Session factories for a node that is still enrolling (:func:`is_enrolling`): our
    self-signed certificate cannot chain to the CA, so ``tlslib.contexts`` refuses it;
    everything else is checked the same way (the key belongs to the certificate, the CA
    is readable). Peers are still verified against the CA: we can dial our parent, and
    it sees us as an anonymous enrollee until our certificate is signed."""
    if tls_cfg.library != "bundled":
        raise TLSSetupError(f"{tls_cfg.cert} is self-signed (waiting for enrollment "
                            "with certs/ticket): that needs [tls] library = "
                            "\"bundled\"")
    pki.load_certificates(tls_cfg.ca, "CA certificate")
    own = pki.load_certificates(tls_cfg.cert)[0]
    if not pki.same_public_key(own, pki.load_private_key(tls_cfg.key)):
        raise TLSSetupError(f"{tls_cfg.key}: private key does not match the "
                            f"certificate in {tls_cfg.cert}")
    return (tlslib.BundledTLS(tls_cfg.ca, tls_cfg.cert, tls_cfg.key, server_side=True,
                              crl=tls_cfg.crl_file),
            tlslib.BundledTLS(tls_cfg.ca, tls_cfg.cert, tls_cfg.key, server_side=False,
                              crl=tls_cfg.crl_file))


class EnrollmentHost(NodeContext, Protocol):
    """What enrollment needs from the node."""

    @property
    def connections(self) -> dict[str, Connection]: ...

    @property
    def all_connections(self) -> set[Connection]: ...

    @property
    def connected_names(self) -> set[str]: ...

    server_context: tlslib.TLSLibrary
    client_context: tlslib.TLSLibrary

    def log_peer(self, conn: Connection, level: int, msg: str, *args: object) -> None: ...

    def count_refused(self, conn: Connection, label: str, reason: str) -> None: ...

    def originate(self, method: str, params: dict[str, Any]) -> bool: ...

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool: ...


def _peer_host(conn: Connection) -> str:
    return conn.address.rsplit(":", 1)[0]


class Enrollment:
    """The certificate requests a node answers, forwards and delivers."""

    def __init__(self, host: EnrollmentHost) -> None:
        self.host = host
        config = host.config
        self.data_dir = Path(config.node.data_dir)
        self.store = pki.RequestStore(self.data_dir)
        self.ca_dir = self.data_dir / "ca"
        self.policy = pki.KeyPolicy(config.pki.min_rsa_bits, config.pki.ec_curves)
        #: router_csr_requests_total{result}
        self.requests = LabeledCounter(("result",))
        #: fingerprint -> the connection that asked (delivery when the answer comes)
        self._waiting: dict[str, Connection] = {}
        self._store_stamp = -1
        self.pending = 0
        self._last_prune = 0.0
        #: parent endpoints connected at the last tick (pending requests go to new ones)
        self._parents_seen: set[str] = set()
        #: connection -> notAfter (Unix time) of its certificate, for the expiry gauge
        self._expiry: dict[Connection, float] = {}
        self._own_expiry: tuple[int, float] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: budget of expensive steps for anonymous requests (see _afford)
        self._expensive = pki.Budget(EXPENSIVE_PER_SECOND, EXPENSIVE_BURST, time.monotonic())
        self._per_source = pki.PerSourceLimit(config.pki.requests_per_minute)
        self._tickets = pki.TicketChecker()
        self._last_renewal_check = 0.0
        self._ca: tuple[object, tuple[x509.Certificate, pki.PrivateKey]] | None = None
        self.refresh(force=True)

    def start(self) -> None:
        """Run :meth:`housekeeping` every ``TICK`` seconds until :meth:`stop`."""
        self._timer = self.host.loop.call_later(TICK, self._on_tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_tick(self) -> None:
        try:
            self.housekeeping(time.time())
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable request directory
            self.host.ratelog.log(("csr_housekeeping",), logging.WARNING,
                                  "certificate enrollment housekeeping failed: %r", exc)
        finally:
            self._timer = self.host.loop.call_later(TICK, self._on_tick)

    # ------------------------------------------------------------------ settings

    @property
    def ticket_salt(self) -> str:
        return self.host.config.pki.ticket_salt or os.environ.get(SALT_ENV, "")

    def is_signer(self) -> bool:
        """Whether this node holds the CA key pair (Icinga: ``ca/ca.key`` exists)."""
        return (self.ca_dir / "ca.key").exists() and (self.ca_dir / "ca.crt").exists()

    def _load_ca(self) -> tuple[x509.Certificate, pki.PrivateKey]:
        """The CA key pair, loaded again only when its files change: loading an RSA key
        validates it, which takes about 100 ms for Icinga's 4096-bit CA key."""
        stamp = tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in
                      (os.stat(self.ca_dir / "ca.crt"), os.stat(self.ca_dir / "ca.key")))
        if self._ca is None or self._ca[0] != stamp:
            self._ca = (stamp, pki.load_ca(self.ca_dir))
        return self._ca[1]

    def _ca_pem(self) -> str:
        return Path(self.host.config.tls.ca).read_text()

    # ------------------------------------------------------------------ answers

    def _answer(self, conn: Connection, msg: jsonrpc.Message, result: dict[str, Any],
                outcome: str | None) -> None:
        if outcome is not None:
            self.requests.inc((outcome,))
        if msg.id is not None:
            conn.write_direct(netstring.encode(jsonrpc.response(msg.id, result)))

    def _push(self, conn: Connection, result: dict[str, Any]) -> None:
        """``pki::UpdateCertificate`` with a signed certificate, straight to ``conn``."""
        conn.write_direct(netstring.encode(jsonrpc.notification(UPDATE, result)))

    def _refuse(self, conn: Connection, msg: jsonrpc.Message, text: str,
                reason: str, result: dict[str, Any] | None = None,
                outcome: str = "refused") -> None:
        self.host.count_refused(conn, REQUEST, reason)
        who = conn.endpoint or conn.identity or "anonymous"
        self.host.ratelog.log((who, REQUEST, reason), logging.WARNING,
                              "[%s %s] certificate request refused: %s", who, conn.address,
                              text)
        answer = dict(result or {})
        answer.update({"status_code": 1, "error": text})
        self._answer(conn, msg, answer, outcome)

    def _afford(self, conn: Connection, msg: jsonrpc.Message, result: dict[str, Any]) -> bool:
        """The node-wide budget of expensive steps for anonymous requests: a ticket check
        is 50 000 rounds of PBKDF2 (about 11 ms in the event loop), a signature up to a
        few ms; the per-address limit alone would let many addresses take the loop away
        from every other peer. False (and refused) when the budget is spent."""
        if conn.endpoint is not None or self._expensive.take(time.monotonic()):
            return True
        self._refuse(conn, msg, "the node is busy with other certificate requests; try "
                     "again in a few seconds", "busy", result)
        return False

    # ------------------------------------------------------------------ RequestCertificate

    def request_certificate(self, conn: Connection, msg: jsonrpc.Message) -> None:
        """Answer one ``pki::RequestCertificate`` (any peer, anonymous included).

        Whatever goes wrong (a file that vanished, a full disk) is a refusal for this
        request, logged with its traceback, never an error in the node's message path."""
        try:
            self._request_certificate(conn, msg)
        except Exception as exc:  # noqa: BLE001 - see above
            log.error("[%s %s] certificate request failed: %s", conn.endpoint or
                      conn.identity or "anonymous", conn.address, exc, exc_info=True)
            self._refuse(conn, msg, f"internal error: {exc}", "error")

    def _request_certificate(self, conn: Connection, msg: jsonrpc.Message) -> None:
        host = self.host
        if conn.endpoint is None and not self._per_source.allow(_peer_host(conn),
                                                                 time.monotonic()):
            self._refuse(conn, msg, f"too many certificate requests from {_peer_host(conn)} "
                         f"(pki.requests_per_minute = "
                         f"{host.config.pki.requests_per_minute})", "rate_limited")
            conn.close("certificate request rate limit")
            return
        params = msg.params if msg.params is not None else {}
        text, ticket = params.get("cert_request"), params.get("ticket")
        if not isinstance(ticket, str):
            ticket = ""
        if isinstance(text, str) and text:
            try:
                cert = pki.parse_request(text)
            except pki.CertRequestError as exc:
                self._refuse(conn, msg, f"cert_request is unusable: {exc}", "bad_request")
                return
        else:
            der = conn.peer_certificate_der()
            if der is None:
                self._refuse(conn, msg, "No certificate or CSR received.", "no_certificate")
                return
            try:
                cert = pki.parse_request(der)
            except pki.CertRequestError as exc:
                self._refuse(conn, msg, f"peer certificate is unusable: {exc}",
                             "bad_request")
                return
        cn = pki.common_name(cert)
        now = time.time()
        try:
            current = tls.cert_is_current(cert, host.config.tls.ca, now)
        except Exception as exc:  # noqa: BLE001 - TLSSetupError: our CA file went away
            self._refuse(conn, msg, f"cannot read our CA certificate: {exc}", "ca_unusable")
            return
        if current:
            host.log_peer(conn, logging.DEBUG, "certificate for CN '%s' is current", cn)
            self._answer(conn, msg, {
                "status_code": 1,
                "error": f"The certificate for CN '{cn}' is valid and uptodate. "
                         f"Skipping automated renewal."}, None)
            return
        signed_by_ca = self._chains_to_ca(cert, now)
        fp = pki.fingerprint(cert)
        result: dict[str, Any] = {"fingerprint_request": fp, "ca": self._ca_pem()}
        host.log_peer(conn, logging.INFO, "certificate request for CN '%s' (%s, "
                      "fingerprint %s)", cn, "signed by our CA" if signed_by_ca
                      else "not signed by our CA", fp[:16])
        try:
            stored = self.store.get(fp)
        except pki.CertRequestError as exc:
            log.warning("certificate request store: %s; it is replaced", exc)
            stored = None
        if stored is not None and stored.cert_response:
            host.log_peer(conn, logging.INFO, "sending the signed certificate for CN '%s'",
                          cn)
            result.update({"cert": stored.cert_response, "status_code": 0})
            self._push(conn, result)
            self._answer(conn, msg, result, "signed")
            return
        if stored is None and self.store.is_removed(fp):
            self._refuse(conn, msg, f"Ticket for CN {cn} declined by administrator.",
                         "declined", result, outcome="declined")
            return
        if self.is_signer():
            if signed_by_ca and self._revoked(conn, msg, cert, result):
                return
            if not signed_by_ca:
                salt = self.ticket_salt
                if not ticket or not salt:
                    host.log_peer(conn, logging.INFO, "certificate request for CN '%s': %s; "
                                  "waiting for 'router ca sign %s'", cn,
                                  "no ticket" if not ticket else "no ticket salt set",
                                  fp)
                    self._pending(conn, msg, cert, ticket, fp, result)
                    return
                if not self._afford(conn, msg, result):
                    return
                if not self._tickets.check(cn, salt, ticket):
                    self._refuse(conn, msg, f"Invalid ticket for CN '{cn}'.",
                                 "invalid_ticket", result, outcome="invalid_ticket")
                    return
            elif not self._afford(conn, msg, result):
                return
            signed = self._sign(conn, msg, cert, result)
            if signed is None:
                return
            result.update({"cert": pki.certificate_pem(signed), "status_code": 0})
            host.log_peer(conn, logging.INFO, "signed a certificate for CN '%s'%s", cn,
                          " (ticket)" if ticket and not signed_by_ca else " (renewal)")
            self._push(conn, result)
            self._answer(conn, msg, result, "signed")
            return
        self._pending(conn, msg, cert, ticket, fp, result)

    def _revoked(self, conn: Connection, msg: jsonrpc.Message, cert: x509.Certificate,
                 result: dict[str, Any]) -> bool:
        """A certificate on the CA's CRL (``router ca revoke``) is not renewed; an
        unreadable CRL refuses every renewal (fail closed). True when refused."""
        crl_path = self.ca_dir / pki.CRL_NAME
        if not crl_path.exists():
            return False
        cn = pki.common_name(cert)
        try:
            crl = pki.load_crl(crl_path, pki.load_certificates(self.ca_dir / "ca.crt")[0])
        except Exception as exc:  # noqa: BLE001 - TLSSetupError
            self._refuse(conn, msg, f"not renewing CN '{cn}': {exc}", "crl_unusable", result)
            return True
        if pki.is_revoked(crl, cert):
            self._refuse(conn, msg, f"the certificate for CN '{cn}' (serial "
                         f"{cert.serial_number:x}) is revoked; not renewing it", "revoked",
                         result)
            return True
        return False

    def _chains_to_ca(self, cert: x509.Certificate, now: float) -> bool:
        """Signed by one of our trust anchors and inside its validity window."""
        try:
            anchors = pki.load_certificates(self.host.config.tls.ca, "CA certificate")
        except Exception:  # noqa: BLE001 - TLSSetupError; the node runs with it anyway
            return False
        when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        return (any(pki.signed_by(cert, ca) for ca in anchors)
                and cert.not_valid_before_utc <= when <= cert.not_valid_after_utc)

    def _sign(self, conn: Connection, msg: jsonrpc.Message, cert: x509.Certificate,
              result: dict[str, Any]) -> x509.Certificate | None:
        """Sign ``cert``'s key for its subject; None (and answered) when it cannot be."""
        try:
            ca_cert, ca_key = self._load_ca()
        except Exception as exc:  # noqa: BLE001 - TLSSetupError: a broken CA directory
            self._refuse(conn, msg, f"the CA in {self.ca_dir} is unusable: {exc}",
                         "ca_unusable", result)
            return None
        try:
            signed = pki.sign_request(ca_cert, ca_key, cert,
                                      days=self.host.config.pki.leaf_valid_days,
                                      policy=self.policy)
        except pki.CertRequestError as exc:
            self._refuse(conn, msg, str(exc), "key_policy", result)
            return None
        anchors = pki.load_certificates(self.host.config.tls.ca, "CA certificate")
        if not any(pki.signed_by(signed, ca) for ca in anchors):
            self._refuse(conn, msg, f"the CA in {self.ca_dir} is not the one in "
                         f"{self.host.config.tls.ca}; not signing", "ca_mismatch", result)
            return None
        return signed

    def _pending(self, conn: Connection, msg: jsonrpc.Message, cert: x509.Certificate,
                 ticket: str, fp: str, result: dict[str, Any]) -> None:
        """Store the request, forward it towards the signer, answer status 2."""
        cn = pki.common_name(cert)
        limit = self.host.config.pki.max_pending_requests
        if not self.store.path(fp).exists() and self.pending >= limit:
            self._refuse(conn, msg, f"{self.pending} certificate requests are pending "
                         f"(pki.max_pending_requests = {limit}); not storing another",
                         "too_many_pending", result)
            return
        pem = pki.certificate_pem(cert)
        if not self.store.path(fp).exists():
            self.pending += 1
        self.store.save_pending(fp, pem, ticket)
        self._store_stamp = self.store.stamp()     # our own write: no rescan needed
        self._waiting[fp] = conn
        forwarded = False
        if not self.is_signer():
            forwarded = self._forward({"cert_request": pem, "ticket": ticket})
        result.update({"status_code": 2,
                       "error": f"Certificate request for CN '{cn}' is pending. Waiting "
                                f"for approval from the parent Icinga instance."})
        self.host.log_peer(conn, logging.INFO, "certificate request for CN '%s' is pending"
                           "%s", cn, " (forwarded to the parent zone)" if forwarded else "")
        self._answer(conn, msg, result, "forwarded" if forwarded else "pending")

    def _forward(self, params: dict[str, Any]) -> bool:
        """Relay a stored request to our zone and parent (Icinga: relay, not logged)."""
        topology = self.host.topology
        zone = topology.zone(topology.local_zone)
        has_peer = zone is not None and len(zone.endpoints) > 1
        if topology.parent_zone is None and not has_peer:
            return False
        return self.host.originate(REQUEST, params)

    # ------------------------------------------------------------------ UpdateCertificate

    def update_certificate(self, conn: Connection, msg: jsonrpc.Message) -> None:
        """A signed certificate from the parent: ours (install) or a requester's (store,
        deliver). Failures are refusals, logged with their traceback."""
        try:
            self._update_certificate(conn, msg)
        except Exception as exc:  # noqa: BLE001 - never an error in the message path
            log.error("[%s %s] certificate update failed: %s", conn.endpoint or
                      conn.identity or "anonymous", conn.address, exc, exc_info=True)
            self.host.count_refused(conn, UPDATE, "error")

    def _update_certificate(self, conn: Connection, msg: jsonrpc.Message) -> None:
        host = self.host
        if conn.endpoint is None or host.topology.relation(conn.endpoint) not in SIGNERS:
            host.count_refused(conn, UPDATE, "not_parent")
            host.ratelog.log((conn.endpoint or conn.identity, UPDATE, "not_parent"),
                             logging.WARNING, "[%s %s] refused %s: only an endpoint of our "
                             "parent zone (or our HA peer) may send certificates",
                             conn.endpoint or conn.identity or "anonymous", conn.address,
                             UPDATE)
            return
        params = msg.params or {}
        text, ca_text, fp = params.get("cert"), params.get("ca"), params.get("fingerprint_request")
        if params.get("status_code", 0) != 0 or not isinstance(text, str) or not text:
            host.log_peer(conn, logging.INFO, "certificate update without a certificate "
                          "(status %r): %s", params.get("status_code"), params.get("error"))
            return
        try:
            cert = pki.parse_request(text)
        except pki.CertRequestError as exc:
            self._refuse_update(conn, f"cert is unusable: {exc}", "bad_certificate")
            return
        cn = pki.common_name(cert)
        if cn == host.name and self._is_own_key(cert):
            self._install_own(conn, cert, ca_text)
            return
        if cn == host.name:
            host.log_peer(conn, logging.WARNING, "certificate for our name '%s' certifies a "
                          "key we do not hold; not installing it", cn)
        if not pki.valid_fingerprint(fp):
            self._refuse_update(conn, f"invalid fingerprint_request {fp!r} for CN '{cn}'",
                                "bad_fingerprint")
            return
        assert isinstance(fp, str)
        try:
            stored = self.store.get(fp)
        except pki.CertRequestError as exc:
            self._refuse_update(conn, str(exc), "bad_request_file")
            return
        if stored is None:
            host.log_peer(conn, logging.INFO, "certificate for CN '%s' answers request %s, "
                          "which is not stored here; ignoring it", cn, fp[:16])
            return
        if not pki.same_public_key(cert, stored.certificate):
            self._refuse_update(conn, f"certificate for CN '{cn}' does not certify the key "
                                f"of request {fp[:16]}", "key_mismatch")
            return
        self.store.set_response(fp, text)
        if not stored.signed:
            self.pending = max(0, self.pending - 1)
        self._store_stamp = self.store.stamp()
        host.log_peer(conn, logging.INFO, "stored the signed certificate for CN '%s'", cn)
        self._deliver(fp, text, ca_text if isinstance(ca_text, str) else self._ca_pem())

    def _refuse_update(self, conn: Connection, text: str, reason: str) -> None:
        self.host.count_refused(conn, UPDATE, reason)
        self.host.log_peer(conn, logging.WARNING, "refused %s: %s", UPDATE, text)

    def _is_own_key(self, cert: x509.Certificate) -> bool:
        try:
            key = pki.load_private_key(self.host.config.tls.key)
        except Exception:  # noqa: BLE001 - TLSSetupError: then it is not ours either
            return False
        return pki.same_public_key(cert, key)

    def _install_own(self, conn: Connection, cert: x509.Certificate,
                     ca_text: object) -> None:
        """Install a certificate for our own key that chains to our trust anchor.

        Icinga also replaces its ``ca.crt`` with the one in the update. We keep ours: a
        parent must not be able to swap the CA this node trusts (a CA rollover is an
        operator's step), and the certificate must verify against the CA we have."""
        was_enrolling = is_enrolling(self.host.config.tls)
        problem = self._install(cert)
        if problem is not None:
            self._refuse_update(conn, problem, "not_installed")
            return
        if was_enrolling:
            # Our parents knew us only as an anonymous enrollee: reconnect (Icinga's
            # UpdateSSLContext does too) so that they authenticate us this time.
            for other in list(self.host.all_connections):
                if other.endpoint is not None and \
                        self.host.topology.relation(other.endpoint) in SIGNERS:
                    other.close("reconnecting with our signed certificate")
        if isinstance(ca_text, str) and ca_text:
            try:
                theirs = pki.parse_request(ca_text)
                ours = pki.load_certificates(self.host.config.tls.ca)
            except Exception:  # noqa: BLE001 - CertRequestError / TLSSetupError
                theirs, ours = None, []
            if theirs not in ours:
                self.host.log_peer(conn, logging.WARNING, "the update came with another CA "
                                   "certificate; keeping ours in %s", self.host.config.tls.ca)
        self.host.log_peer(conn, logging.INFO, "installed our new certificate (valid until "
                           "%s); new connections use it", cert.not_valid_after_utc.isoformat())

    def _install(self, cert: x509.Certificate) -> str | None:
        """Write our certificate (atomically) and load it for new sessions; why not, when
        it must not or cannot be: not our key, or not signed by our trust anchor."""
        host = self.host
        tls_cfg = host.config.tls
        if not self._is_own_key(cert):
            return "the certificate does not certify our key; not installing it"
        try:
            anchors = pki.load_certificates(tls_cfg.ca, "CA certificate")
        except Exception as exc:  # noqa: BLE001 - TLSSetupError
            return f"cannot read our CA certificate: {exc}"
        if not any(pki.signed_by(cert, ca) for ca in anchors):
            return (f"the new certificate is not signed by the CA in {tls_cfg.ca}; not "
                    "installing it")
        pki.write_certificate(tls_cfg.cert, cert)
        (Path(tls_cfg.cert).parent / "ticket").unlink(missing_ok=True)
        self._own_expiry = None
        try:
            server, client = tlslib.contexts(tls_cfg.library, tls_cfg.ca, tls_cfg.cert,
                                             tls_cfg.key, tls_cfg.crl_file)
        except Exception as exc:  # noqa: BLE001 - TLSSetupError, ValueError
            return (f"installed a new certificate but cannot load it ({exc}); new "
                    "connections use the old one")
        host.server_context, host.client_context = server, client
        return None

    # ------------------------------------------------------------------ our own renewal

    def _own_certificate_due(self) -> x509.Certificate | None:
        """Our certificate when it is due for renewal (not "current" by Icinga's rule:
        less than 30 days left, or issued before 2017), else None."""
        tls_cfg = self.host.config.tls
        try:
            own = pki.load_certificates(tls_cfg.cert)[0]
            if tls.cert_is_current(own, tls_cfg.ca, time.time()):
                return None
        except Exception:  # noqa: BLE001 - TLSSetupError: nothing we can renew
            return None
        return own

    def renew_own(self, parents: set[str]) -> None:
        """Renew our certificate when it is due (users.md P15): re-sign it locally on the
        signer (Icinga does the same), else ask ``parents`` (``pki::RequestCertificate``
        without ``cert_request``: the parent renews the certificate we present) and install
        the ``pki::UpdateCertificate`` that comes back."""
        own = self._own_certificate_due()
        if own is None:
            return
        if self.is_signer():
            try:
                ca_cert, ca_key = self._load_ca()
                new = pki.sign_request(ca_cert, ca_key, own,
                                       days=self.host.config.pki.leaf_valid_days)
            except Exception as exc:  # noqa: BLE001 - TLSSetupError, CertRequestError
                log.warning("our certificate is due for renewal but cannot be re-signed: %s",
                            exc)
                return
            problem = self._install(new)
            if problem is not None:
                log.warning("renewing our own certificate: %s", problem)
            else:
                log.info("renewed our own certificate with the local CA (valid until %s)",
                         new.not_valid_after_utc.isoformat())
            return
        ticket_path = Path(self.host.config.tls.cert).parent / "ticket"
        try:
            ticket = ticket_path.read_text().strip()
        except OSError:
            ticket = ""
        frame = netstring.encode(jsonrpc.notification(REQUEST, {"ticket": ticket}))
        for name in sorted(parents):
            if self.host.send_to(name, frame, REQUEST):
                log.info("our certificate expires %s: asked %s to renew it",
                         own.not_valid_after_utc.isoformat(), name)

    # ------------------------------------------------------------------ delivery

    def _deliver(self, fp: str, cert_pem: str, ca_pem: str) -> bool:
        """Push a signed certificate to the connection that asked for it, if still open."""
        conn = self._waiting.get(fp)
        if conn is None or conn.state != "open":
            self._waiting.pop(fp, None)
            return False
        del self._waiting[fp]
        self._push(conn, {"ca": ca_pem, "cert": cert_pem, "fingerprint_request": fp,
                          "status_code": 0})
        self.host.log_peer(conn, logging.INFO, "delivered the signed certificate for "
                           "request %s", fp[:16])
        return True

    def refresh(self, force: bool = False) -> None:
        """Re-read the request directory when it changed (``router ca sign`` / ``remove``):
        the pending count, and delivery of newly signed requests to waiting peers."""
        stamp = self.store.stamp()
        if stamp == self._store_stamp and not force:
            return
        self._store_stamp = stamp
        listing = self.store.list()
        for path, why in listing.corrupt:
            self.host.ratelog.log(("csr_corrupt", str(path)), logging.WARNING,
                                  "certificate request store: skipping %s: %s", path, why)
        self.pending = sum(1 for r in listing.requests if not r.signed)
        if self._waiting:
            ca_pem = ""
            for request in listing.requests:
                if request.signed and request.fingerprint in self._waiting:
                    ca_pem = ca_pem or self._ca_pem()
                    self._deliver(request.fingerprint, request.cert_response or "", ca_pem)

    def housekeeping(self, now: float) -> None:
        """Every ``TICK``: pick up ``router ca`` changes, send pending requests to a parent
        that just connected, renew our own certificate when due (checked daily and on
        each parent connect), drop closed waiters, prune old request files hourly."""
        self.refresh()
        host = self.host
        topology = host.topology
        parents = {name for name in host.connected_names
                   if topology.relation(name) in SIGNERS}
        new_parents = parents - self._parents_seen
        if new_parents and not self.is_signer():
            for request in self.store.list().requests:
                if not request.signed:
                    self._forward({"cert_request": request.cert_request,
                                   "ticket": request.ticket})
        self._parents_seen = parents
        if new_parents or now - self._last_renewal_check >= RENEW_INTERVAL:
            self._last_renewal_check = now
            self.renew_own(new_parents or parents)
        for fp, conn in list(self._waiting.items()):
            if conn.state != "open":
                del self._waiting[fp]
        for conn in [c for c in self._expiry if c not in host.all_connections]:
            del self._expiry[conn]
        if now - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = now
            if self.store.prune():
                self.refresh(force=True)
            self._per_source.prune(time.monotonic())

    # ------------------------------------------------------------------ metrics

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
        path = self.host.config.tls.cert
        try:
            mtime = os.stat(path).st_mtime_ns
            if self._own_expiry is None or self._own_expiry[0] != mtime:
                self._own_expiry = (mtime, pki.load_certificates(path)[0]
                                    .not_valid_after_utc.timestamp())
        except Exception:  # noqa: BLE001 - OSError, TLSSetupError: no sample then
            return None
        return self._own_expiry[1]

    def families(self) -> list[MetricFamily]:
        """``router_csr_requests_total``, ``router_csr_pending``,
        ``router_cert_expiry_seconds`` (our own certificate and each connected peer's)."""
        now = time.time()
        expiry = []
        own = self._own_not_after()
        if own is not None:
            expiry.append(({"endpoint": self.host.name}, own - now))
        for name, conn in sorted(self.host.connections.items()):
            not_after = self._not_after(conn)
            if not_after is not None:
                expiry.append(({"endpoint": name}, not_after - now))
        return [
            family("router_csr_requests_total", [
                ({"result": r}, self.requests.get((r,))) for r in RESULTS]),
            family("router_csr_pending", [({}, self.pending)]),
            family("router_cert_expiry_seconds", expiry),
        ]


__all__ = ["Enrollment", "EnrollmentHost", "RESULTS", "SALT_ENV", "enrolling_contexts",
           "is_enrolling", "prepare_self_enrollment", "ticket_path"]
