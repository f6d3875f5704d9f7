"""Certificate enrollment: ``pki::RequestCertificate`` and ``pki::UpdateCertificate``.

Answered the way Icinga 2.13 answers them (icinga-protocol.md §7): the node whose data
directory holds ``ca/ca.crt`` and ``ca/ca.key`` is the *signer*. A request whose
certificate is ours and current gets status 1 "valid and uptodate"; one with a stored
signed certificate gets it (status 0); a declined one (``<fp>.removed``) status 1; on the
signer a valid ticket (or a certificate of ours that is due for renewal, or a request for
a new key that proves it holds the key of such a certificate, router.pki.rekey) is signed
at once (status 0, also pushed as ``pki::UpdateCertificate``), a wrong ticket is refused
without storing anything, and no ticket makes it *pending* (status 2): stored under
``DATA_DIR/certificate-requests`` for ``router ca sign``. A node without the CA key
stores it and forwards it to its zone and parent; the signed certificate comes back as
``pki::UpdateCertificate`` with ``fingerprint_request``, is stored beside the request and
handed to the requester (now, if it is still connected, else on its next request).

Requests are answered one at a time, in the order they came, by one task; the CPU work
(checking a certificate against the CA, a renewal proof, the ticket's 50 000 rounds of
PBKDF2, the signature) runs in one worker thread, so that the event loop keeps relaying
while a burst of enrollments is signed (both release the GIL; perf/RESULTS.md).

Where we differ from Icinga, on purpose:
- ``pki::UpdateCertificate`` is accepted only from an endpoint of our parent zone or our
  HA peer (Icinga also takes it from anonymous peers);
- a certificate for our own name is installed only if it certifies *our* key (or the new
  key of our renewal) and chains to the CA we already trust (our ``ca.crt`` is never
  replaced by an update); otherwise it is refused and logged;
- anonymous requests are rate-limited per address and the pending requests are capped
  (users.md P13/P16: enrollment must not be a way to fill a disk or a CPU); so are an
  enrolled agent's (an endpoint of a zone with no zone below it), per endpoint, and an
  agent may have ``PENDING_PER_AGENT`` requests pending at most: one agent filled the
  node-wide cap in seconds and locked out every enrollment and renewal (review). Our HA
  peer and satellites, which forward their zones' requests, are not limited;
- a pending anonymous requester is not disconnected at once (Icinga does, #10330 in
  users.md P14): it keeps its connection until the enrollment timeout, so a certificate
  signed upstream meanwhile reaches it directly;
- what ``router ca sign`` writes is picked up by the running node (the request
  directory's mtime, checked every second) and delivered to a connected requester.

Our own certificate (enrolling, renewal, installing) is router.node.owncert; the metrics
router.node.certmetrics.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from cryptography import x509

from router import pki
from router.node.certmetrics import RESULTS, CertMetrics
from router.node.owncert import (
    REQUEST,
    SIGNERS,
    UPDATE,
    OwnCertHost,
    OwnCertificate,
    enrolling_contexts,
    finish_key_rotation,
    is_enrolling,
    prepare_self_enrollment,
    ticket_path,
)
from router.ops.metrics import LabeledCounter, MetricFamily
from router.protocol import jsonrpc, netstring
from router.transport import tls

if TYPE_CHECKING:  # pragma: no cover
    from router.node.stats import Connection

log = logging.getLogger("router.node")

T = TypeVar("T")

#: Environment variable with the ticket salt, used when neither the command line nor
#: ``[pki] ticket_salt`` sets one.
SALT_ENV: Final = "ROUTER_TICKET_SALT"
#: Expensive steps (ticket check, signature) for anonymous requests, node-wide: this many
#: per second on average, bursts of EXPENSIVE_BURST. Since they run in a worker thread
#: this bounds the CPU enrollment takes, not the loop's latency.
EXPENSIVE_PER_SECOND: Final = 10.0
EXPENSIVE_BURST: Final = 20.0
#: Requests waiting for their turn; more are refused as busy (authenticated ones too).
QUEUE_LIMIT: Final = 1000
PRUNE_INTERVAL: Final = 3600.0
#: Our own certificate is checked for renewal this often (Icinga RENEW_INTERVAL), and
#: whenever a parent connects.
RENEW_INTERVAL: Final = 86400.0
#: How often the request directory is looked at (``router ca sign`` on a running node).
TICK: Final = 1.0


class EnrollmentHost(OwnCertHost, Protocol):
    """What enrollment needs from the node."""

    @property
    def connections(self) -> dict[str, Connection]: ...

    @property
    def connected_names(self) -> set[str]: ...

    def log_peer(self, conn: Connection, level: int, msg: str, *args: object) -> None: ...

    def count_refused(self, conn: Connection, label: str, reason: str) -> None: ...

    def originate(self, method: str, params: dict[str, Any],
                  came_from: str | None = None) -> bool: ...


def _peer_host(conn: Connection) -> str:
    return conn.address.rsplit(":", 1)[0]


#: Pending requests an agent may have stored at once (its own renewal, and one spare).
PENDING_PER_AGENT = 2


class _Refusal(Exception):
    """A request the CPU step refuses: the text for the requester, the counted reason."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.text, self.reason = text, reason


class Enrollment:
    """The certificate requests a node answers, forwards and delivers."""

    def __init__(self, host: EnrollmentHost) -> None:
        self.host = host
        config = host.config
        self.data_dir = Path(config.node.data_dir)
        self.store = pki.RequestStore(self.data_dir)
        self.ca_dir = self.data_dir / "ca"
        self.metrics = CertMetrics(lambda: self.host.config.tls.cert)
        #: our own certificate: renewal and installation (router.node.owncert)
        self.own = OwnCertificate(host, self.is_signer, self._load_ca)
        #: fingerprint -> the connection that asked (delivery when the answer comes)
        self._waiting: dict[str, Connection] = {}
        #: agent endpoint -> fingerprints of its pending requests (PENDING_PER_AGENT)
        self._agent_pending: dict[str, set[str]] = {}
        self._store_stamp = -1
        self.pending = 0
        self._last_prune = 0.0
        #: parent endpoints connected at the last tick (pending requests go to new ones)
        self._parents_seen: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        #: budget of expensive steps for anonymous requests (see _afford)
        self._expensive = pki.Budget(EXPENSIVE_PER_SECOND, EXPENSIVE_BURST, time.monotonic())
        self._per_source = pki.PerSourceLimit(config.pki.requests_per_minute)
        self._tickets = pki.TicketChecker()
        self._last_renewal_check = 0.0
        self._ca: tuple[object, tuple[x509.Certificate, pki.PrivateKey]] | None = None
        #: requests waiting for the one task that answers them in order
        self._queue: collections.deque[tuple[Connection, jsonrpc.Message]] = \
            collections.deque()
        self._worker: asyncio.Task[None] | None = None
        #: the one thread the CPU work of requests runs in (made when first needed)
        self._executor: ThreadPoolExecutor | None = None
        self.refresh(force=True)

    @property
    def requests(self) -> LabeledCounter:
        """``router_csr_requests_total{result}``."""
        return self.metrics.requests

    def start(self) -> None:
        """Run :meth:`housekeeping` every ``TICK`` seconds until :meth:`stop`. A signer
        loads its CA key now: loading (and validating) an RSA 4096 key holds the GIL for
        100 ms or more, which in the middle of an enrollment burst stalls every session."""
        if self.is_signer():
            try:
                self._load_ca()
            except Exception as exc:  # noqa: BLE001 - TLSSetupError: refused per request
                log.warning("the CA in %s is unusable: %s", self.ca_dir, exc)
        self._timer = self.host.loop.call_later(TICK, self._on_tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

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

    @property
    def renew_before(self) -> dt.timedelta:
        """How long before expiry a certificate is renewed (``[pki] renew_before_days``)."""
        return dt.timedelta(days=self.host.config.pki.renew_before_days)

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

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the enrollment thread (one: requests are answered in
        order, and one burst of enrollments takes at most one core)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="router-csr")
        return await self.host.loop.run_in_executor(self._executor,
                                                    functools.partial(fn, *args))

    # ------------------------------------------------------------------ answers

    def _answer(self, conn: Connection, msg: jsonrpc.Message, result: dict[str, Any],
                outcome: str | None) -> None:
        if outcome is not None:
            self.metrics.count(outcome)
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
        is 50 000 rounds of PBKDF2 (about 11 ms of CPU), a signature up to a few ms; the
        per-address limit alone would let many addresses keep a core busy. False (and
        refused) when the budget is spent."""
        if self._limit_key(conn) is None or self._expensive.take(time.monotonic()):
            return True
        self._refuse(conn, msg, "the node is busy with other certificate requests; try "
                     "again in a few seconds", "busy", result)
        return False

    # ------------------------------------------------------------------ RequestCertificate

    @property
    def policy(self) -> pki.KeyPolicy:
        """The key policy of the configuration in force: a reload that tightens
        ``[pki]`` applies at once (it was read once at start, and a reload reported it
        applied while the old policy went on signing; review)."""
        settings = self.host.config.pki
        return pki.KeyPolicy(settings.min_rsa_bits, settings.ec_curves)

    def _limit_key(self, conn: Connection) -> str | None:
        """What the per-source limits count ``conn`` as: its address when anonymous, its
        endpoint when it is an agent (a zone with no zone below it); None for our HA peer
        and satellites, which forward the requests of whole zones."""
        if conn.endpoint is None:
            return _peer_host(conn)
        topology = self.host.topology
        zone = topology.zone_of(conn.endpoint)
        if zone is None or zone == topology.local_zone or topology.children(zone):
            return None
        return f"endpoint {conn.endpoint}"

    def request_certificate(self, conn: Connection, msg: jsonrpc.Message) -> None:
        """Take one ``pki::RequestCertificate`` (any peer, anonymous included): refused
        at once when its address (or, for an agent, its endpoint) is over the rate
        limit, else answered in turn."""
        key = self._limit_key(conn)
        if self._per_source.per_minute != self.host.config.pki.requests_per_minute:
            self._per_source = pki.PerSourceLimit(self.host.config.pki.requests_per_minute)
        if key is not None and not self._per_source.allow(key, time.monotonic()):
            self._refuse(conn, msg, f"too many certificate requests from "
                         f"{conn.endpoint or _peer_host(conn)} (pki.requests_per_minute = "
                         f"{self.host.config.pki.requests_per_minute})", "rate_limited")
            if conn.endpoint is None:       # an agent keeps its session (its checks)
                conn.close("certificate request rate limit")
            return
        if len(self._queue) >= QUEUE_LIMIT:
            self._refuse(conn, msg, f"{len(self._queue)} certificate requests are waiting "
                         "to be answered; try again in a few seconds", "busy")
            return
        self._queue.append((conn, msg))
        if self._worker is None:
            self._worker = self.host.loop.create_task(self._answer_in_turn())

    async def _answer_in_turn(self) -> None:
        """Answer the queued requests one after the other. Whatever goes wrong with one (a
        file that vanished, a full disk) is a refusal for it, logged with its traceback,
        never an error in the node's message path."""
        try:
            while self._queue:
                conn, msg = self._queue.popleft()
                if conn.state != "open":
                    continue        # gone while it waited: no work for nobody
                try:
                    await self._request_certificate(conn, msg)
                except Exception as exc:  # noqa: BLE001 - see above
                    log.error("[%s %s] certificate request failed: %s", conn.endpoint or
                              conn.identity or "anonymous", conn.address, exc,
                              exc_info=True)
                    self._refuse(conn, msg, f"internal error: {exc}", "error")
        finally:
            self._worker = None

    def _assess(self, cert: x509.Certificate, now: float
                ) -> tuple[bool, bool, x509.Certificate | None, str | None]:
        """In the worker thread: whether ``cert`` is current, whether it chains to our CA,
        and the certificate a new-key request proves it renews (only when that one
        chains to our CA), or why its proof fails.

        Raises:
            TLSSetupError: our CA file cannot be read.
        """
        ca_path = self.host.config.tls.ca
        current = tls.cert_is_current(cert, ca_path, now, self.renew_before)
        if current:
            return True, True, None, None
        signed_by_ca = self._chains_to_ca(cert, now)
        previous, problem = None, None
        if not signed_by_ca:
            try:
                previous = pki.renewal_proof(cert)
            except pki.CertRequestError as exc:
                problem = str(exc)
            if previous is not None and not self._chains_to_ca(previous, now):
                previous = None
        return False, signed_by_ca, previous, problem

    async def _request_certificate(self, conn: Connection, msg: jsonrpc.Message) -> None:
        host = self.host
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
        try:
            current, signed_by_ca, previous, problem = await self._cpu(
                self._assess, cert, time.time())
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
        fp = pki.fingerprint(cert)
        result: dict[str, Any] = {"fingerprint_request": fp, "ca": self._ca_pem()}
        if problem is not None:
            self._refuse(conn, msg, problem, "bad_renewal_proof", result)
            return
        host.log_peer(conn, logging.INFO, "certificate request for CN '%s' (%s, "
                      "fingerprint %s)", cn, "signed by our CA" if signed_by_ca else
                      "a new key for a certificate of our CA" if previous is not None
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
        if not self.is_signer():
            self._pending(conn, msg, cert, ticket, fp, result)
            return
        renews = cert if signed_by_ca else previous
        if renews is not None:
            if self._revoked(conn, msg, renews, result):
                return
            if previous is not None and await self._cpu(
                    tls.cert_is_current, previous, host.config.tls.ca, time.time(),
                    self.renew_before):
                self._answer(conn, msg, {
                    "status_code": 1,
                    "error": f"The certificate for CN '{cn}' is valid and uptodate. "
                             f"Skipping automated renewal."}, None)
                return
            if not self._afford(conn, msg, result):
                return
        else:
            salt = self.ticket_salt
            if not ticket or not salt:
                host.log_peer(conn, logging.INFO, "certificate request for CN '%s': %s; "
                              "waiting for 'router ca sign %s'", cn,
                              "no ticket" if not ticket else "no ticket salt set", fp)
                self._pending(conn, msg, cert, ticket, fp, result)
                return
            if not self._afford(conn, msg, result):
                return
            if not await self._cpu(self._tickets.check, cn, salt, ticket):
                self._refuse(conn, msg, f"Invalid ticket for CN '{cn}'.",
                             "invalid_ticket", result, outcome="invalid_ticket")
                return
        try:
            signed = await self._cpu(self._sign, cert)
        except _Refusal as refusal:
            self._refuse(conn, msg, refusal.text, refusal.reason, result)
            return
        result.update({"cert": pki.certificate_pem(signed), "status_code": 0})
        host.log_peer(conn, logging.INFO, "signed a certificate for CN '%s'%s", cn,
                      " (renewal with a new key)" if previous is not None else
                      " (renewal)" if signed_by_ca else " (ticket)")
        self._push(conn, result)
        self._answer(conn, msg, result, "signed")

    def _revoked(self, conn: Connection, msg: jsonrpc.Message, cert: x509.Certificate,
                 result: dict[str, Any]) -> bool:
        """A certificate on its CA's CRL (``router ca revoke``) is not renewed; an
        unreadable CRL refuses every renewal (fail closed). True when refused.

        Its CA's: during a CA rollover the old CA lives in ``DATA_DIR/ca-old`` with its
        CRL (docs/pki.md), and an old-CA certificate chains to the trust bundle still; read
        only ``ca/ca.crl``, a certificate the old CA had revoked was renewed by the new one
        for the same key (review). One issued by neither cannot be checked: refused."""
        cn = pki.common_name(cert)
        for directory in (self.ca_dir, self.ca_dir.with_name(self.ca_dir.name + "-old")):
            try:
                issuer = pki.load_certificates(directory / "ca.crt")[0]
            except Exception:  # noqa: BLE001 - TLSSetupError: no such CA here
                continue
            if not pki.signed_by(cert, issuer):
                continue
            crl_path = directory / pki.CRL_NAME
            if not crl_path.exists():
                return False
            try:
                crl = pki.load_crl(crl_path, issuer)
            except Exception as exc:  # noqa: BLE001 - TLSSetupError
                self._refuse(conn, msg, f"not renewing CN '{cn}': {exc}", "crl_unusable",
                             result)
                return True
            if pki.is_revoked(crl, cert):
                self._refuse(conn, msg, f"the certificate for CN '{cn}' (serial "
                             f"{cert.serial_number:x}) is revoked; not renewing it",
                             "revoked", result)
                return True
            return False
        self._refuse(conn, msg, f"not renewing CN '{cn}': its certificate was issued by "
                     f"a CA that is neither {self.ca_dir} nor its -old directory, so its "
                     f"revocation cannot be checked; request one with a ticket",
                     "crl_unusable", result)
        return True

    def _chains_to_ca(self, cert: x509.Certificate, now: float) -> bool:
        """Signed by one of our trust anchors and inside its validity window."""
        try:
            anchors = pki.load_certificates(self.host.config.tls.ca, "CA certificate")
        except Exception:  # noqa: BLE001 - TLSSetupError; the node runs with it anyway
            return False
        when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        return (any(pki.signed_by(cert, ca) for ca in anchors)
                and cert.not_valid_before_utc <= when <= cert.not_valid_after_utc)

    def _sign(self, cert: x509.Certificate) -> x509.Certificate:
        """In the worker thread: sign ``cert``'s key for its subject.

        Raises:
            _Refusal: it cannot be signed (a broken CA, the key policy, a CA that is not
                the one we trust)."""
        try:
            ca_cert, ca_key = self._load_ca()
        except Exception as exc:  # noqa: BLE001 - TLSSetupError: a broken CA directory
            raise _Refusal(f"the CA in {self.ca_dir} is unusable: {exc}",
                           "ca_unusable") from None
        try:
            signed = pki.sign_request(ca_cert, ca_key, cert,
                                      days=self.host.config.pki.leaf_valid_days,
                                      policy=self.policy)
        except pki.CertRequestError as exc:
            raise _Refusal(str(exc), "key_policy") from None
        anchors = pki.load_certificates(self.host.config.tls.ca, "CA certificate")
        if not any(pki.signed_by(signed, ca) for ca in anchors):
            raise _Refusal(f"the CA in {self.ca_dir} is not the one in "
                           f"{self.host.config.tls.ca}; not signing", "ca_mismatch")
        return signed

    async def sign_stored(self, cert: x509.Certificate) -> x509.Certificate:
        """Sign a stored request's certificate as an answer to a peer would be signed:
        in the enrollment thread, under the key policy, with the CA we trust. For the
        operator's own actions (the web console's "sign").

        Raises:
            CertRequestError: it cannot be signed; the message says why."""
        try:
            return await self._cpu(self._sign, cert)
        except _Refusal as exc:
            raise pki.CertRequestError(exc.text) from None

    def _pending(self, conn: Connection, msg: jsonrpc.Message, cert: x509.Certificate,
                 ticket: str, fp: str, result: dict[str, Any]) -> None:
        """Store the request, forward it towards the signer, answer status 2."""
        cn = pki.common_name(cert)
        limit = self.host.config.pki.max_pending_requests
        new = not self.store.path(fp).exists()
        if new and self.pending >= limit:
            self._refuse(conn, msg, f"{self.pending} certificate requests are pending "
                         f"(pki.max_pending_requests = {limit}); not storing another",
                         "too_many_pending", result)
            return
        agent = conn.endpoint if conn.endpoint is not None and self._limit_key(conn) else None
        mine = self._agent_pending.setdefault(agent, set()) if agent is not None else None
        if new and mine is not None and len(mine) >= PENDING_PER_AGENT:
            self._refuse(conn, msg, f"endpoint {agent} has {len(mine)} certificate requests "
                         "pending already; not storing another", "too_many_pending", result)
            return
        pem = pki.certificate_pem(cert)
        if new:
            self.pending += 1
            if mine is not None:
                mine.add(fp)
        before = self.store.stamp()
        self.store.save_pending(fp, pem, ticket)
        self._own_write(before)
        self._waiting[fp] = conn
        forwarded = False
        if not self.is_signer():
            forwarded = self._forward({"cert_request": pem, "ticket": ticket}, conn.endpoint)
        result.update({"status_code": 2,
                       "error": f"Certificate request for CN '{cn}' is pending. Waiting "
                                f"for approval from the parent Icinga instance."})
        self.host.log_peer(conn, logging.INFO, "certificate request for CN '%s' is pending"
                           "%s", cn, " (forwarded to the parent zone)" if forwarded else "")
        self._answer(conn, msg, result, "forwarded" if forwarded else "pending")

    def _forward(self, params: dict[str, Any], came_from: str | None = None) -> bool:
        """Relay a stored request to our zone and parent (Icinga: relay, not logged),
        never back to the endpoint or zone it ``came_from`` (our HA peer would return it)."""
        topology = self.host.topology
        zone = topology.zone(topology.local_zone)
        has_peer = zone is not None and len(zone.endpoints) > 1
        if topology.parent_zone is None and not has_peer:
            return False
        return self.host.originate(REQUEST, params, came_from)

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
        if cn == host.name:
            kind = self.own.key_for(cert)
            if kind in ("current", "pending"):
                self._install_own(conn, cert, ca_text, kind)
                return
            if kind == "retired":
                host.log_peer(conn, logging.INFO, "a renewal of the key we replaced came "
                              "after our new key was signed; ignoring it")
                return
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
        before = self.store.stamp()
        self.store.set_response(fp, text)
        self._own_write(before)
        if not stored.signed:
            self.pending = max(0, self.pending - 1)
        for fingerprints in self._agent_pending.values():
            fingerprints.discard(fp)
        host.log_peer(conn, logging.INFO, "stored the signed certificate for CN '%s'", cn)
        self._deliver(fp, text, ca_text if isinstance(ca_text, str) else self._ca_pem())

    def _refuse_update(self, conn: Connection, text: str, reason: str) -> None:
        self.host.count_refused(conn, UPDATE, reason)
        self.host.log_peer(conn, logging.WARNING, "refused %s: %s", UPDATE, text)

    def _install_own(self, conn: Connection, cert: x509.Certificate,
                     ca_text: object, kind: str) -> None:
        """Install a certificate for our own key (or our renewal's new key) that chains
        to our trust anchor.

        Icinga also replaces its ``ca.crt`` with the one in the update. We keep ours: a
        parent must not be able to swap the CA this node trusts (a CA rollover is an
        operator's step), and the certificate must verify against the CA we have."""
        was_enrolling = is_enrolling(self.host.config.tls)
        problem = self.own.install(cert, kind=kind)
        if problem is not None:
            self._refuse_update(conn, problem, "not_installed")
            return
        self.metrics.own_changed()
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
        self.host.log_peer(conn, logging.INFO, "installed our new certificate%s (valid until "
                           "%s); new connections use it", " and key" if kind == "pending" else "",
                           cert.not_valid_after_utc.isoformat())

    def renew_own(self, parents: set[str]) -> None:
        """Renew our certificate when it is due (router.node.owncert)."""
        self.own.renew(parents)
        self.metrics.own_changed()

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

    def _own_write(self, before: int) -> None:
        """Our own write to the request store needs no rescan, unless the store changed
        before it (``router ca sign``): taking the stamp then hid that (review)."""
        if before == self._store_stamp:
            self._store_stamp = self.store.stamp()

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
        unsigned = {r.fingerprint for r in listing.requests if not r.signed}
        for agent in list(self._agent_pending):        # signed, removed or expired
            self._agent_pending[agent] &= unsigned
            if not self._agent_pending[agent]:
                del self._agent_pending[agent]
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
        connected = host.connected_names
        parents = {name for name in topology.peers_and_parents() if name in connected}
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
        self.own.retry(parents, time.monotonic())
        for fp, conn in list(self._waiting.items()):
            if conn.state != "open":
                del self._waiting[fp]
        self.metrics.forget_closed(host.all_connections)
        if now - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = now
            if self.store.prune():
                self.refresh(force=True)
            self._per_source.prune(time.monotonic())

    # ------------------------------------------------------------------ metrics

    def families(self) -> list[MetricFamily]:
        """``router_csr_requests_total``, ``router_csr_pending``,
        ``router_cert_expiry_seconds`` (our own certificate and each connected peer's)."""
        return self.metrics.families(self.host.name, self.host.connections, self.pending)


__all__ = ["Enrollment", "EnrollmentHost", "RESULTS", "SALT_ENV", "enrolling_contexts",
           "finish_key_rotation", "is_enrolling", "prepare_self_enrollment", "ticket_path"]
