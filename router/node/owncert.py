"""Our own certificate: enrolling with a ticket, renewing it before it expires, installing
what our parent signed.

Renewal (docs/pki.md "Renewal"): our certificate is *due* when it is no longer "current"
by Icinga's rule (less than 30 days left, or issued before 2017). It is checked daily and
whenever a parent connects. With ``[pki] renew_with_new_key`` (the default) we make a new
key of the same kind (:func:`router.pki.renewal_key`), keep it as ``<key>.new`` (0600)
beside the old pair, which stays in use, and ask our parents with a request that proves we
hold the old key (:func:`router.pki.rekey_request`). Only when a certificate for the new
key arrives, signed by our CA, are key and certificate replaced (each file atomically,
:func:`router.pki.install_key_pair`) and the TLS contexts reloaded for new sessions; the
sessions that are up keep theirs, nobody is disconnected.

An Icinga 2 signer cannot check that proof: it leaves such a request pending (it would
sign it with a ticket in ``certs/ticket``), and an Icinga satellite hands out what its
parent signed only to a request that comes again. So when no certificate for the new key
has come ``NEW_KEY_PATIENCE`` seconds after we asked, we ask again, and also for our
current key to be re-signed (what Icinga itself does), then after twice as long each time;
whichever certificate comes first is installed, a new key that was not signed is kept for
the next round. A node never runs into expiry because its parent cannot rotate keys. The signing master renews its own
certificate locally, with a new key as well.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from router import pki
from router.config import TLSConfig
from router.errors import TLSSetupError
from router.node.context import NodeContext
from router.protocol import jsonrpc, netstring
from router.routing import Relation
from router.transport import tls, tlslib

if TYPE_CHECKING:  # pragma: no cover
    from router.node.stats import Connection

__all__ = [
    "NEW_KEY_PATIENCE",
    "OwnCertificate",
    "OwnCertHost",
    "REQUEST",
    "SIGNERS",
    "UPDATE",
    "enrolling_contexts",
    "finish_key_rotation",
    "is_enrolling",
    "pending_key_path",
    "prepare_self_enrollment",
    "ticket_path",
]

log = logging.getLogger("router.node")

REQUEST: Final = "pki::RequestCertificate"
UPDATE: Final = "pki::UpdateCertificate"
#: Who may send us ``pki::UpdateCertificate``: our parent zone, and the HA peer of our
#: zone (in a two-master zone only one master holds the CA key; the other forwards to it,
#: and Icinga takes the answer from it as well). Never anonymous peers or children.
SIGNERS: Final = frozenset({Relation.PARENT, Relation.PEER})
#: Seconds to wait for a certificate for our new key before asking again, and for our
#: current key to be re-signed as well (an Icinga 2 signer leaves a new-key request
#: pending); the wait doubles after each round. A router signer answers in milliseconds,
#: through satellites too.
NEW_KEY_PATIENCE: Final = 30.0


def ticket_path(tls_cfg: TLSConfig) -> Path:
    """``certs/ticket`` beside our certificate (Icinga: ``DataDir/certs/ticket``)."""
    return Path(tls_cfg.cert).parent / "ticket"


def pending_key_path(tls_cfg: TLSConfig) -> Path:
    """``<key>.new``: the key a renewal asked a certificate for, until it is signed (the
    name ``router pki request --new-key`` uses too)."""
    return Path(f"{tls_cfg.key}.new")


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


def finish_key_rotation(tls_cfg: TLSConfig) -> bool:
    """At start: complete a key swap a crash interrupted (the new key is in place, its
    certificate only staged as ``<cert>.new``). True (and logged) when it did."""
    done = pki.finish_key_rotation(tls_cfg.key, tls_cfg.cert)
    if done:
        log.warning("%s did not match %s: completed an interrupted key rotation with %s",
                    tls_cfg.key, tls_cfg.cert, pki.staged_cert_path(tls_cfg.cert))
    return done


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


class OwnCertHost(NodeContext, Protocol):
    """What the renewal of our own certificate needs from the node."""

    @property
    def all_connections(self) -> set[Connection]: ...

    server_context: tlslib.TLSLibrary
    client_context: tlslib.TLSLibrary

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool: ...


class OwnCertificate:
    """Renewal and installation of this node's certificate (see the module docstring)."""

    def __init__(self, host: OwnCertHost, is_signer: Callable[[], bool],
                 load_ca: Callable[[], tuple[x509.Certificate, pki.PrivateKey]]) -> None:
        self.host = host
        #: whether this node holds the CA key pair (asked each time: ``ca/`` may appear
        #: while we run), and the pair
        self._is_signer = is_signer
        self._load_ca = load_ca
        #: monotonic time of our first new-key request of this renewal, None when none
        self.asked_new_key: float | None = None
        #: when to ask again while no certificate came (monotonic), and the wait after that
        self._retry_at = 0.0
        self._retry_wait = NEW_KEY_PATIENCE
        #: (our certificate, the pending key's SPKI) -> the request we sent for them, so
        #: that asking again sends the same request (same fingerprint, nothing piles up
        #: in a parent's request directory; ECDSA signatures differ every time)
        self._request: tuple[bytes, x509.Certificate] | None = None
        #: the public key our last rotation retired (a late renewal of it is expected)
        self._retired: pki.PublicKey | None = None
        #: the new key, once made or read from ``<key>.new``; whether one is being made
        self._pending: pki.PrivateKey | None = None
        self._making = False

    @property
    def policy(self) -> pki.KeyPolicy:
        """The key policy of the configuration in force (a reload applies at once)."""
        settings = self.host.config.pki
        return pki.KeyPolicy(settings.min_rsa_bits, settings.ec_curves)

    @property
    def new_key(self) -> bool:
        """``[pki] renew_with_new_key`` in force."""
        return self.host.config.pki.renew_with_new_key

    @property
    def tls_cfg(self) -> TLSConfig:
        return self.host.config.tls

    # ------------------------------------------------------------------ when

    def due(self) -> x509.Certificate | None:
        """Our certificate when it is due for renewal (not "current" by Icinga's rule:
        less than 30 days left, or issued before 2017), else None."""
        tls_cfg = self.tls_cfg
        try:
            own = pki.load_certificates(tls_cfg.cert)[0]
            if tls.cert_is_current(own, tls_cfg.ca, time.time(), dt.timedelta(
                    days=self.host.config.pki.renew_before_days)):
                return None
        except Exception:  # noqa: BLE001 - TLSSetupError: nothing we can renew
            return None
        return own

    def renew(self, parents: set[str]) -> None:
        """Renew our certificate when it is due (users.md P15): on the signer locally,
        else by asking ``parents``; with a new key unless ``renew_with_new_key`` is off."""
        own = self.due()
        if own is None:
            self._reset()
            return
        if self._is_signer():
            self._renew_locally(own)
            return
        if self.new_key and not pki.signed_by(own, own):
            # (a self-signed certificate is a first enrollment, not a renewal: its key
            # has never been certified, the ticket asks for it as it is)
            key = self._ready_key()
            if key is None:
                self._make_key(lambda: self.renew(parents))
                return
            try:
                params = self._new_key_request(own, key)
            except Exception as exc:  # noqa: BLE001 - TLSSetupError, OSError, ValueError
                log.warning("our certificate is due for renewal but no new key can be "
                            "prepared (%s); asking to re-sign the current one", exc)
            else:
                if self._ask(parents, params, own, "for our new key"):
                    if self.asked_new_key is None:
                        self.asked_new_key = time.monotonic()
                        self._retry_at = self.asked_new_key + NEW_KEY_PATIENCE
                return
        self._ask(parents, {"ticket": self._ticket()}, own, "to renew it")

    def _reset(self) -> None:
        self.asked_new_key = None
        self._retry_at, self._retry_wait = 0.0, NEW_KEY_PATIENCE

    def retry(self, parents: set[str], now: float) -> None:
        """Every tick: while no certificate for our new key has come, ask again after
        ``NEW_KEY_PATIENCE``, then after twice as long each time (up to a day): the same
        request again (an Icinga satellite hands out what its parent signed only when
        asked again) and the re-signing of our current key (an Icinga signer keeps a
        new-key request pending), whichever comes first is installed."""
        if self.asked_new_key is None or now < self._retry_at:
            return
        own = self.due()
        if own is None:
            self._reset()
            return
        self._retry_wait = min(self._retry_wait * 2, 86400.0)
        self._retry_at = now + self._retry_wait
        key = self._ready_key()
        try:
            params = self._new_key_request(own, key) if key is not None else None
        except Exception as exc:  # noqa: BLE001 - TLSSetupError, OSError, ValueError
            log.warning("cannot ask again for our new key: %s", exc)
        else:
            if params is not None:
                self._ask(parents, params, own, "again for our new key")
        self._ask(parents, {"ticket": self._ticket()}, own, "to re-sign our current key "
                  "as well (no certificate for the new key yet; an Icinga 2 signer needs "
                  "a ticket or 'icinga2 ca sign' for a new key)")

    def _ticket(self) -> str:
        try:
            return ticket_path(self.tls_cfg).read_text().strip()
        except OSError:
            return ""

    def _ask(self, parents: set[str], params: dict[str, Any], own: x509.Certificate,
             what: str) -> bool:
        frame = netstring.encode(jsonrpc.notification(REQUEST, params))
        asked = False
        for name in sorted(parents):
            if self.host.send_to(name, frame, REQUEST):
                asked = True
                log.info("our certificate expires %s: asked %s %s",
                         own.not_valid_after_utc.isoformat(), name, what)
        return asked

    # ------------------------------------------------------------------ the new key

    def _ready_key(self) -> pki.PrivateKey | None:
        """The new key of this renewal when it is made: in memory, or ``<key>.new`` from
        an earlier round (maybe before a restart) when it is still within policy."""
        path = pending_key_path(self.tls_cfg)
        if not path.exists():
            self._pending = None
            return None
        if self._pending is None:
            try:
                key = pki.load_private_key(path)
            except TLSSetupError as exc:
                log.warning("%s is unusable (%s); making a new key", path, exc)
                return None
            if self.policy.refusal(key.public_key()) is not None:
                return None
            self._pending, self._request = key, None
        return self._pending

    def _make_key(self, then: Callable[[], None]) -> None:
        """Make the new key in a worker thread (an RSA 4096 key takes seconds), write it
        to ``<key>.new`` (0600) before anything is sent, then call ``then`` in the loop."""
        if self._making:
            return
        try:
            current = pki.load_private_key(self.tls_cfg.key)
        except TLSSetupError as exc:
            log.warning("our certificate is due for renewal but our key is unusable: %s",
                        exc)
            return
        policy, path = self.policy, pending_key_path(self.tls_cfg)

        def make() -> pki.PrivateKey:
            key = pki.renewal_key(current, policy)
            pki.write_private_key(path, key)
            return key

        def made(future: asyncio.Future[pki.PrivateKey]) -> None:
            self._making = False
            if future.cancelled():
                return
            try:
                self._pending, self._request = future.result(), None
            except Exception as exc:  # noqa: BLE001 - OSError, ValueError
                log.warning("our certificate is due for renewal but no new key can be "
                            "made: %s", exc)
                return
            then()

        self._making = True
        self.host.loop.run_in_executor(None, make).add_done_callback(made)

    def _new_key_request(self, own: x509.Certificate, key: pki.PrivateKey
                         ) -> dict[str, Any]:
        stamp = bytes.fromhex(pki.fingerprint(own)) + key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if self._request is None or self._request[0] != stamp:
            current = pki.load_private_key(self.tls_cfg.key)
            self._request = (stamp, pki.rekey_request(own, current, key))
        return {"cert_request": pki.certificate_pem(self._request[1]),
                "ticket": self._ticket()}

    def _renew_locally(self, own: x509.Certificate) -> None:
        """The signer re-signs its own certificate, for a new key unless configured not
        to (Icinga re-signs the same key)."""
        days = self.host.config.pki.leaf_valid_days
        key: pki.PrivateKey | None = None
        if self.new_key:
            key = self._ready_key()
            if key is None:
                self._make_key(lambda: self.renew(set()))
                return
        try:
            ca_cert, ca_key = self._load_ca()
            request = own if key is None else pki.self_signed_certificate(key,
                                                                           self.host.name)
            new = pki.sign_request(ca_cert, ca_key, request, days=days)
        except Exception as exc:  # noqa: BLE001 - TLSSetupError, CertRequestError
            log.warning("our certificate is due for renewal but cannot be re-signed: %s",
                        exc)
            return
        problem = self.install(new, key)
        if problem is not None:
            log.warning("renewing our own certificate: %s", problem)
        else:
            log.info("renewed our own certificate with the local CA%s (valid until %s)",
                     " and a new key" if key is not None else "",
                     new.not_valid_after_utc.isoformat())

    # ------------------------------------------------------------------ installing

    def key_for(self, cert: x509.Certificate) -> str | None:
        """Which of our keys ``cert`` certifies: ``"current"``, ``"pending"`` (the new key
        of a renewal), ``"retired"`` (the key our last rotation replaced: a renewal that
        came late) or None."""
        for kind, path in (("current", self.tls_cfg.key),
                           ("pending", pending_key_path(self.tls_cfg))):
            try:
                if pki.same_public_key(cert, pki.load_private_key(path)):
                    return kind
            except Exception:  # noqa: BLE001 - TLSSetupError: not this one then
                continue
        if self._retired is not None and pki.same_public_key(cert, self._retired):
            return "retired"
        return None

    def install(self, cert: x509.Certificate, key: pki.PrivateKey | None = None, *,
                kind: str | None = None) -> str | None:
        """Install a certificate for our current key, for the pending new key, or (from
        the signer's local renewal) for ``key``, when it chains to our trust anchor; then
        load it for new sessions (sessions that are up keep theirs). ``kind`` is what
        :meth:`key_for` said, when the caller asked already. Why not, when it must not or
        cannot be installed."""
        host = self.host
        tls_cfg = self.tls_cfg
        if key is not None:
            kind = "given"
        elif kind is None:
            kind = self.key_for(cert)
        if kind is None or kind == "retired":
            return "the certificate does not certify our key; not installing it"
        if key is None and kind == "pending":
            key = pki.load_private_key(pending_key_path(tls_cfg))
        try:
            anchors = pki.load_certificates(tls_cfg.ca, "CA certificate")
        except Exception as exc:  # noqa: BLE001 - TLSSetupError
            return f"cannot read our CA certificate: {exc}"
        if not any(pki.signed_by(cert, ca) for ca in anchors):
            return (f"the new certificate is not signed by the CA in {tls_cfg.ca}; not "
                    "installing it")
        if key is not None:
            retired = pki.load_private_key(tls_cfg.key).public_key()
            pki.install_key_pair(tls_cfg.key, tls_cfg.cert, key, cert)
            self._retired = retired
            pending_key_path(tls_cfg).unlink(missing_ok=True)
            self._pending, self._request = None, None
        else:
            pki.write_certificate(tls_cfg.cert, cert)
        ticket_path(tls_cfg).unlink(missing_ok=True)
        if self.due() is None:
            self._reset()
        try:
            server, client = tlslib.contexts(tls_cfg.library, tls_cfg.ca, tls_cfg.cert,
                                             tls_cfg.key, tls_cfg.crl_file)
        except Exception as exc:  # noqa: BLE001 - TLSSetupError, ValueError
            return (f"installed a new certificate but cannot load it ({exc}); new "
                    "connections use the old one")
        host.server_context, host.client_context = server, client
        return None
