"""The node's TLS sessions, on one of two OpenSSL builds, behind one small interface.

The transport pumps bytes through a :class:`TLSSession` (ciphertext in with ``feed``,
out with ``pull_output``; plaintext through ``read`` and ``write``) and never touches a
TLS library itself. Two libraries implement it (``[tls] library``):

``bundled`` (the default)
    pyOpenSSL on the OpenSSL that ships inside the ``cryptography`` wheel (4.0 when this
    was written). Debian 12/13's OpenSSL 3.0, which Python's ``ssl`` module uses, decodes
    every certificate through the slow 3.0 decoder path: parsing the peer's chain is most
    of a server handshake. Measured with the same certificates (``perf/RESULTS.md``): a
    server handshake costs 0.50-0.54 ms of CPU instead of 0.66 ms in isolation, and a
    node accepting 5 000 agents spends 0.78-0.84 ms per agent instead of 1.0-1.05 ms.
    The price is on the data path: pyOpenSSL's calls go through cffi and end every read
    loop with an exception, about 5 us more per routed message (some 10 % of the node's
    CPU per result at a steady 5 000 results/s).
``system``
    Python's ``ssl`` module on the distribution's OpenSSL.

Both behave the same on the wire as far as the cluster is concerned: TLS 1.2 minimum,
Icinga's cipher list, one CA file as trust anchor (and, with ``bundled``, as the client-CA
list, as Icinga sends it), an optional client certificate that must verify when it is
presented, SNI = the endpoint dialled, identity = the certificate CN; with ``[tls]
crl_file``, the peer's own certificate (not its issuers) checked against the CRL on every
handshake. ``bundled`` sends
our certificate chain without the root CA (every peer trusts its own copy), ``system``
with it, as Icinga does (Python's ``ssl`` cannot stop OpenSSL from adding it). Failures
surface as ``ssl.SSLError`` (``reason`` set to OpenSSL's reason name) or
``ssl.SSLCertVerificationError`` (``verify_code``) from either library, so
:func:`router.tls.classify_handshake_error` sees one set of exceptions.
"""

from __future__ import annotations

import logging
import os
import ssl
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from router.transport import tls
from router.config import TLS_LIBRARIES as LIBRARIES
from router.errors import TLSSetupError
from router.pki import check_crl_file, crl_days_left

if TYPE_CHECKING:
    # Imported lazily at run time (only the ``bundled`` library needs pyOpenSSL).
    import OpenSSL.SSL
    import OpenSSL.crypto

__all__ = ["CRL_WARN_DAYS", "LIBRARIES", "TLSLibrary", "TLSSession", "check_chain_size",
           "check_crl_age", "contexts", "handshake_step"]

log = logging.getLogger("router.tls")

#: pyOpenSSL allocates the whole size asked for on every ``recv`` and ``bio_read`` (also
#: when nothing comes back); above glibc's mmap threshold (128 KiB) each call would map
#: and unmap memory. A record holds at most 16 KiB of plaintext, and one ``recv`` returns
#: at most one record.
_READ_MAX: Final = 16 * 1024
_OUT_CHUNK: Final = 64 * 1024
#: SSL_MODE_NO_AUTO_CHAIN (ssl.h; pyOpenSSL has no name for it): send the chain that was
#: loaded instead of completing it from the trust store on every handshake.
_MODE_NO_AUTO_CHAIN: Final = 0x00000008


class TLSSession(Protocol):
    """One TLS session on memory buffers (no socket): the transport's only view of TLS."""

    def feed(self, data: bytes | memoryview) -> None:
        """Ciphertext received from the peer."""

    def handshake(self) -> bool:
        """Advance the handshake: True once complete, False while it needs more bytes.

        Raises:
            ssl.SSLError: the handshake failed (see :func:`router.tls.classify_handshake_error`).
        """

    def read(self, size: int) -> bytes | None:
        """Up to ``size`` bytes of plaintext; None when no more is available now, b"" once
        the peer sent close_notify.

        Raises:
            ssl.SSLError: a broken record or an alert from the peer.
        """

    def write(self, data: bytes | memoryview) -> int:
        """Encrypt (some of) ``data``; the number of bytes taken."""

    def pull_output(self) -> bytes:
        """Ciphertext to send to the peer (b"" when there is none)."""

    def final_output_can_wait(self) -> bool:
        """Whether what the handshake's last step produced may wait for our next write.

        True only for a TLS 1.3 server session that sends session tickets: the peer
        needs nothing from that step, so the tickets can share a send with our Hello.
        """

    def close_notify(self) -> None:
        """Queue our close_notify (fetch it with ``pull_output``)."""

    def peer_certificate_der(self) -> bytes | None:
        """The peer's certificate (DER), None when it sent none."""

    def peer_identity(self) -> str | None:
        """Subject CN of the verified peer certificate (the first CN), None without one."""


def handshake_step(session: TLSSession) -> BaseException | bool:
    """One handshake step: True when complete, False when it needs more bytes, or the
    exception it failed with. Runs in a TLS thread or inline (transport.connection)."""
    try:
        return session.handshake()
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return exc


class TLSLibrary(Protocol):
    """Makes sessions for one side (server or client) with one set of certificates."""

    name: str

    def session(self, server_hostname: str | None = None) -> TLSSession:
        """A new session; ``server_hostname`` (client side) is sent as SNI."""


def contexts(library: str, ca: str | os.PathLike[str], cert: str | os.PathLike[str],
             key: str | os.PathLike[str], crl: str | os.PathLike[str] | None = None
             ) -> tuple[TLSLibrary, TLSLibrary]:
    """(server, client) session factories for the node's certificate, key and CA.

    With ``crl`` (``[tls] crl_file``: PEM, signed by the CA) both check the peer's
    certificate against it on every handshake: a revoked one fails the handshake
    (``cert_revoked``).

    Raises:
        TLSSetupError: see :func:`router.tls.check_own_files` and
            :func:`router.pki.check_crl_file`; the library is not available.
        ValueError: unknown ``library``.
    """
    if library in LIBRARIES:
        check_chain_size(ca, cert)
        if crl is not None:
            check_crl_age(crl, ca)
    if library == "system":
        return (SystemTLS(tls.server_context(ca, cert, key, crl), server_side=True),
                SystemTLS(tls.client_context(ca, cert, key, crl), server_side=False))
    if library == "bundled":
        tls.check_own_files(ca, cert, key)
        return (BundledTLS(ca, cert, key, server_side=True, crl=crl),
                BundledTLS(ca, cert, key, server_side=False, crl=crl))
    raise ValueError(f"unknown TLS library {library!r} (expected one of {', '.join(LIBRARIES)})")


def check_chain_size(ca: str | os.PathLike[str], cert: str | os.PathLike[str]) -> int:
    """Log a warning when the certificate chain we send is large (users.md P1: peers
    with small limits fail such handshakes with "excessive message size"); its size in
    bytes. A chain that cannot be read is left to the checks that follow."""
    try:
        count, size = tls.chain_size(ca, cert)
    except TLSSetupError:
        return 0
    if size > tls.CHAIN_WARN_BYTES:
        log.warning("%s: the certificate chain we send is %d certificates, %d bytes (more "
                    "than %d): peers with small TLS limits may fail the handshake "
                    "(\"excessive message size\"); send fewer intermediates", cert, count,
                    size, tls.CHAIN_WARN_BYTES)
    return size


#: A ``[tls] crl_file`` with fewer days than this before its nextUpdate is logged as a
#: warning whenever contexts are built (start, reload): once it passes, every handshake
#: fails ("CRL has expired", users.md P15).
CRL_WARN_DAYS: Final = 30.0


def check_crl_age(crl: str | os.PathLike[str], ca: str | os.PathLike[str]) -> float | None:
    """Log a warning when the CRL expires within :data:`CRL_WARN_DAYS`; its days left.

    Raises:
        TLSSetupError: see :func:`router.pki.check_crl_file`.
    """
    days = crl_days_left(check_crl_file(crl, ca))
    if days is not None and days < CRL_WARN_DAYS:
        log.warning("%s: the CRL expires in %.1f days (nextUpdate); after that every "
                    "handshake fails: re-issue it with 'router ca revoke' on the signing "
                    "master and reload", crl, days)
    return days


# -- system: Python's ssl module ------------------------------------------------------------

class SystemTLS:
    """Sessions from an ``ssl.SSLContext`` (:func:`router.tls.server_context` or
    :func:`router.tls.client_context`) over a pair of ``ssl.MemoryBIO``."""

    name = "system"

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self.context = context
        self.server_side = server_side

    def session(self, server_hostname: str | None = None) -> _SystemSession:
        return _SystemSession(self.context, self.server_side, server_hostname)


class _SystemSession:
    __slots__ = ("_in", "_obj", "_out")

    def __init__(self, context: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=None if server_side else server_hostname)

    def feed(self, data: bytes | memoryview) -> None:
        self._in.write(data)

    def handshake(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def read(self, size: int) -> bytes | None:
        try:
            return self._obj.read(size)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""

    def write(self, data: bytes | memoryview) -> int:
        return self._obj.write(data)

    def pull_output(self) -> bytes:
        return self._out.read() if self._out.pending else b""

    def final_output_can_wait(self) -> bool:
        return False        # no tickets (num_tickets = 0): a last step's output is needed

    def close_notify(self) -> None:
        try:
            self._obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass        # close_notify is queued; we never wait for the peer's

    def peer_certificate_der(self) -> bytes | None:
        try:
            return self._obj.getpeercert(binary_form=True)
        except ValueError:          # handshake not done
            return None

    def peer_identity(self) -> str | None:
        return tls.peer_identity(self._obj)


# -- bundled: pyOpenSSL on cryptography's OpenSSL -------------------------------------------

def _bundled_context(ca: str | os.PathLike[str], cert: str | os.PathLike[str],
                     key: str | os.PathLike[str], server_side: bool,
                     crl: str | os.PathLike[str] | None = None) -> OpenSSL.SSL.Context:
    from OpenSSL import SSL
    from OpenSSL.crypto import X509StoreFlags

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server_side else SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No session resumption is ever used by Icinga or by us.
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # Give the 16 KiB record buffers back while a connection is idle (as Python's ssl
    # does): 5 000 mostly idle agents would otherwise hold about 30 KiB each. Send the
    # chain we load, never one completed from the trust store (see below).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS | _MODE_NO_AUTO_CHAIN)
    try:
        ctx.set_cipher_list(tls.ICINGA_CIPHERS.encode())
    except SSL.Error as exc:  # pragma: no cover - only with a crippled OpenSSL
        raise TLSSetupError(f"no usable cipher in the Icinga cipher list: {exc}") from None
    try:
        ctx.load_verify_locations(os.fspath(ca))
        if server_side:
            ctx.load_client_ca(os.fsencode(ca))     # as Icinga: the CA names go to clients
    except SSL.Error as exc:
        raise TLSSetupError(f"{ca}: cannot load CA certificate: {exc}") from None
    if crl is not None:
        # Every handshake checks the peer's certificate (not its issuers) against the CRL.
        store = ctx.get_cert_store()
        if store is None:  # pragma: no cover - a context always has a store
            raise TLSSetupError(f"{crl}: no certificate store to load the CRL into")
        try:
            store.add_crl(check_crl_file(crl, ca))
        except SSL.Error as exc:
            raise TLSSetupError(f"{crl}: cannot load CRL: {exc}") from None
        store.set_flags(X509StoreFlags.CRL_CHECK)
    # Our certificate and its intermediates, without the root CA: each peer checks us
    # against its own copy of the root, so the copy Icinga sends only costs the peer
    # parsing it (0.14 ms of a 0.73 ms client handshake; perf/RESULTS.md) and 500 bytes.
    try:
        with tls.chain_file(ca, cert, with_root=False) as path:
            ctx.use_certificate_chain_file(path)
        ctx.use_privatekey_file(os.fspath(key))
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise TLSSetupError(f"{cert} / {key}: cannot load certificate and key: {exc}") \
            from None
    # VERIFY_PEER without FAIL_IF_NO_PEER_CERT: a server asks for a client certificate,
    # lets a peer without one in (anonymous), lets a self-signed one in as anonymous too
    # (what an enrolling agent presents: it may only request a certificate) and fails any
    # other that does not verify; a client requires a valid server certificate. The
    # callbacks note OpenSSL's verdict so that a failure can name its X509 error.
    ctx.set_verify(SSL.VERIFY_PEER,
                   _admit_unverified_client if server_side else _note_verify_result)
    return ctx


def _admit_unverified_client(conn: OpenSSL.SSL.Connection, cert: OpenSSL.crypto.X509,
                             errnum: int, depth: int, ok: int) -> bool:
    """Server side: a self-signed client certificate (X509 error 18 at depth 0, what
    ``icinga2 pki request`` and a not yet enrolled node present) does not fail the
    handshake; the session has no identity (anonymous: it may only enroll). Any other
    verification failure (another CA, expired, not yet valid) still fails it."""
    _note_verify_result(conn, cert, errnum, depth, ok)
    return bool(ok) or (errnum == _SELF_SIGNED_LEAF and depth == 0)


#: X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
_SELF_SIGNED_LEAF: Final = 18


def _note_verify_result(conn: OpenSSL.SSL.Connection, cert: OpenSSL.crypto.X509, errnum: int,
                        depth: int, ok: int) -> bool:
    if not ok:
        ref = conn.get_app_data()
        session = ref() if ref is not None else None
        if session is not None and session.verify_error is None:
            session.verify_error = errnum
    return bool(ok)


#: ``length(bio)`` of a memory BIO. The BIO is a cffi pointer: cffi objects have no types.
_BIOLength: TypeAlias = Callable[[Any], int]


def _mem_bio_length() -> _BIOLength | None:
    """``length(bio)`` of a memory BIO through the binding pyOpenSSL uses, or None if a
    later pyOpenSSL moves it (sessions then learn "no output" from an exception)."""
    try:
        from OpenSSL._util import ffi, lib

        get, null = lib.BIO_get_mem_data, ffi.NULL
    except Exception:  # noqa: BLE001 - any breakage of a private binding
        return None
    return lambda bio: get(bio, null)


class _SSLModule(Protocol):
    """What a session uses of the ``OpenSSL.SSL`` module (kept on it: imported lazily)."""

    Connection: type[OpenSSL.SSL.Connection]
    Error: type[OpenSSL.SSL.Error]
    WantReadError: type[OpenSSL.SSL.WantReadError]
    ZeroReturnError: type[OpenSSL.SSL.ZeroReturnError]


class BundledTLS:
    """Sessions on pyOpenSSL (``cryptography``'s OpenSSL) in memory-BIO mode."""

    name = "bundled"

    def __init__(self, ca: str | os.PathLike[str], cert: str | os.PathLike[str],
                 key: str | os.PathLike[str], *, server_side: bool,
                 crl: str | os.PathLike[str] | None = None) -> None:
        try:
            from OpenSSL import SSL
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise TLSSetupError(f"[tls] library 'bundled' needs pyOpenSSL: {exc}") from None
        self._SSL: _SSLModule = SSL
        self.server_side = server_side
        self.context = _bundled_context(ca, cert, key, server_side, crl)
        self._output_length = _mem_bio_length()

    def session(self, server_hostname: str | None = None) -> _BundledSession:
        return _BundledSession(self._SSL, self.context, self.server_side, server_hostname,
                               self._output_length)


def _verify_error_text(code: int) -> str:
    """OpenSSL's text for an X509 error code (what Python's ssl reports as
    verify_message), through the binding pyOpenSSL itself uses; a plain fallback if a
    later pyOpenSSL moves it, so that a failure is still reported, not a crash."""
    try:
        from OpenSSL._util import ffi, lib

        text: bytes = ffi.string(lib.X509_verify_cert_error_string(code))   # cffi: untyped
        return text.decode(errors="replace")
    except Exception:  # noqa: BLE001 - any breakage of a private binding
        return f"X509 verification error {code}"


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    text = _verify_error_text(code)
    exc = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {text}")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.library = "SSL"
    exc.verify_code = code
    exc.verify_message = text
    return exc


def _translate(exc: Exception, verify_error: int | None) -> ssl.SSLError:
    """A pyOpenSSL error as the ``ssl`` exception Python's module would raise.

    OpenSSL's reason strings are its reason names in lower case with spaces
    ("tlsv1 alert unknown ca" is TLSV1_ALERT_UNKNOWN_CA), which is what ``ssl`` reports.
    """
    from OpenSSL import SSL

    if isinstance(exc, SSL.ZeroReturnError):
        return ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)")
    if isinstance(exc, SSL.SysCallError):
        return ssl.SSLEOFError(8, f"EOF in violation of protocol: {exc}")
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    reasons = [r for (_lib, _func, r) in errors if r]
    text = reasons[0] if reasons else str(exc) or exc.__class__.__name__
    name = text.upper().replace(" ", "_")
    if name == "CERTIFICATE_VERIFY_FAILED" and verify_error is not None:
        return _verify_error(verify_error)
    out = ssl.SSLError(1, f"[SSL: {name}] {text}")
    out.reason = name
    out.library = "SSL"
    return out


class _BundledSession:
    __slots__ = ("_SSL", "__weakref__", "_conn", "_input_bio", "_output_bio",
                 "_output_length", "_server_side", "verify_error")

    def __init__(self, SSL: _SSLModule, context: OpenSSL.SSL.Context, server_side: bool,
                 server_hostname: str | None, output_length: _BIOLength | None = None) -> None:
        self._SSL = SSL
        conn = SSL.Connection(context, None)
        # pull_output runs after every read, and usually finds nothing: asking the BIO
        # its length costs 0.2 us, learning it from pyOpenSSL's WantReadError 1.3 us.
        # The BIO is a private cffi pointer of pyOpenSSL's (cffi objects have no types).
        self._output_bio: Any = getattr(conn, "_from_ssl", None)
        self._output_length = output_length if self._output_bio is not None else None
        #: the ciphertext BIO read() checks before asking OpenSSL (see read)
        self._input_bio: Any = getattr(conn, "_into_ssl", None)
        if server_side:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
            if server_hostname:
                conn.set_tlsext_host_name(server_hostname.encode())
        # A weak reference: session -> connection -> session would be a cycle that only the
        # cyclic GC frees, keeping each closed session's OpenSSL state until it runs.
        conn.set_app_data(weakref.ref(self))
        self._conn = conn
        self._server_side = server_side
        #: X509 error of the first certificate OpenSSL rejected (see _note_verify_result)
        self.verify_error: int | None = None

    def feed(self, data: bytes | memoryview) -> None:
        self._conn.bio_write(data)          # any buffer; no copy of a memoryview

    def handshake(self) -> bool:
        SSL = self._SSL
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise _translate(exc, self.verify_error) from None
        return True

    def read(self, size: int) -> bytes | None:
        SSL = self._SSL
        # Nothing fed that OpenSSL has not taken (the input BIO is empty) and no decrypted
        # bytes waiting (SSL_pending): recv could only raise WantReadError, which costs
        # pyOpenSSL 2-3 us (its error queue, an exception) on every read cycle: 10 % of
        # a node's CPU at 10 000 paced results/s (perf/RESULTS.md, issue 22). OpenSSL
        # reads a record's header, then its body, from the BIO (read-ahead is off), so
        # a complete record is either still in the BIO or already decrypted.
        length = self._output_length
        if (length is not None and self._input_bio is not None
                and length(self._input_bio) <= 0 and not self._conn.pending()):
            return None
        try:
            return self._conn.recv(min(size, _READ_MAX))
        except SSL.WantReadError:
            return None
        except SSL.ZeroReturnError:
            return b""
        except SSL.Error as exc:
            raise _translate(exc, self.verify_error) from None

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self._conn.send(data)
        except self._SSL.Error as exc:
            raise _translate(exc, self.verify_error) from None

    def pull_output(self) -> bytes:
        # A memory BIO returns min(pending, asked): a short read means it is empty, so
        # the usual case is one call and no WantReadError raised (and caught) to learn it.
        length = self._output_length
        if length is not None and length(self._output_bio) <= 0:
            return b""
        try:
            chunk = self._conn.bio_read(_OUT_CHUNK)
        except self._SSL.WantReadError:
            return b""
        if len(chunk) < _OUT_CHUNK:
            return chunk
        chunks = [chunk]
        while len(chunk) == _OUT_CHUNK:
            try:
                chunk = self._conn.bio_read(_OUT_CHUNK)
            except self._SSL.WantReadError:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def final_output_can_wait(self) -> bool:
        # pyOpenSSL cannot set num_tickets = 0: a TLS 1.3 server's last step writes two
        # session tickets and nothing the client waits for.
        return self._server_side and self._conn.get_protocol_version_name() == "TLSv1.3"

    def close_notify(self) -> None:
        try:
            self._conn.shutdown()
        except self._SSL.Error:
            pass

    def peer_certificate_der(self) -> bytes | None:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        return cert.public_bytes(serialization.Encoding.DER)

    def peer_identity(self) -> str | None:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None or self.verify_error is not None:
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            return None
        value = names[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
