"""``router pki``: a CA and node certificates in Icinga's layout, and enrolling a node.

``new-ca``, ``issue``, ``ticket`` serve the CA holder; ``new-cert``, ``save-cert``,
``request`` and ``status`` a node that enrolls with a parent (router or Icinga), the way
``icinga2 pki new-cert|save-cert|request`` do (docs/pki.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from router.cli.common import operator_errors

if TYPE_CHECKING:  # pragma: no cover
    from cryptography import x509

__all__ = ["pki_group"]


@click.group("pki")
def pki_group() -> None:
    """Create a CA and node certificates (Icinga's on-disk layout)."""


@pki_group.command("new-ca")
@click.argument("directory", type=click.Path(file_okay=False))
def pki_new_ca(directory: str) -> None:
    """Create ca.crt and ca.key in DIRECTORY."""
    from router import pki

    if (Path(directory) / "ca.key").exists():
        raise click.ClickException(f"{directory}/ca.key exists; not overwriting a CA")
    with operator_errors():
        cert, key = pki.create_ca(directory)
    click.echo(f"{cert}\n{key}")


@pki_group.command("issue")
@click.argument("node_name")
@click.option("--ca-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory holding ca.crt and ca.key.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where NAME.crt, NAME.key and ca.crt are written (e.g. DATA/certs).")
def pki_issue(node_name: str, ca_dir: str, out_dir: str) -> None:
    """Issue a certificate for NODE_NAME signed by the CA in --ca-dir."""
    from router import pki

    _check_cn(node_name)
    with operator_errors():
        cert, key = pki.issue_node_files(ca_dir, out_dir, node_name)
    click.echo(f"{cert}\n{key}")


@pki_group.command("ticket")
@click.option("--cn", required=True, help="Common name of the node.")
@click.option("--salt", required=True, help="The parent's TicketSalt.")
def pki_ticket(cn: str, salt: str) -> None:
    """Print the Icinga-compatible enrollment ticket for CN."""
    from router import pki

    click.echo(pki.ticket(cn, salt))


# -- enrolling a node ---------------------------------------------------------------------

def _check_cn(cn: str) -> None:
    """A common name becomes a file name (``NAME.key``): one with a path separator, a
    NUL or nothing in it would write elsewhere or fail deep inside (review)."""
    if not cn or cn in (".", "..") or any(c in cn for c in "/\\\x00"):
        raise click.BadParameter(f"{cn!r} cannot be a node's name (it names its files)",
                                 param_hint="CN")


def _certs_dir(data_dir: str) -> Path:
    return Path(data_dir) / "certs"


@pki_group.command("new-cert")
@click.option("--cn", required=True, help="Common name: the endpoint name of the node.")
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True)
@click.option("--bits", type=click.IntRange(256, 16384), default=None,
              help="RSA: 2048, 3072, 4096 (default 2048); EC: 256, 384, 521 (default 256).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Write DATA_DIR/certs/CN.key and CN.crt (Icinga's layout).")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), default=None,
              help="Private key file to write (instead of --data-dir).")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False), default=None,
              help="Self-signed certificate file to write (instead of --data-dir).")
def pki_new_cert(cn: str, key_type: str, bits: int | None, data_dir: str | None,
                 key_path: str | None, cert_path: str | None) -> None:
    """Create a key (0600) and a self-signed certificate to enroll with."""
    from router import pki

    _check_cn(cn)
    if data_dir is not None:
        certs = _certs_dir(data_dir)
        certs.mkdir(mode=pki.DIR_MODE, parents=True, exist_ok=True)
        key_path = key_path or str(certs / f"{cn}.key")
        cert_path = cert_path or str(certs / f"{cn}.crt")
    if key_path is None or cert_path is None:
        raise click.UsageError("give --data-dir, or both --key and --cert")
    if Path(key_path).exists():
        raise click.ClickException(f"{key_path} exists; not overwriting a private key")
    try:
        key = pki.generate_key(key_type, bits)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bits") from None
    pki.write_private_key(key_path, key)
    pki.write_certificate(cert_path, pki.self_signed_certificate(key, cn))
    click.echo(f"{key_path}\n{cert_path}")


def _fetch_peer_certificate(host: str, port: int, timeout: float) -> bytes:
    """DER of the certificate a cluster port presents (no verification: trust on first
    use, as ``icinga2 pki save-cert``)."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"cannot fetch the certificate of {host}:{port}: {exc}") \
            from None
    if der is None:
        raise click.ClickException(f"{host}:{port} presented no certificate")
    return der


@pki_group.command("save-cert")
@click.option("--host", required=True, help="The parent node (master or satellite).")
@click.option("--port", default=5665, show_default=True, type=click.IntRange(1, 65535))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to save it, e.g. DATA_DIR/certs/trusted-parent.crt.")
@click.option("--timeout", default=10.0, show_default=True, type=float)
def pki_save_cert(host: str, port: int, out: str, timeout: float) -> None:
    """Save the certificate a parent presents; 'router pki request' trusts exactly it."""
    from cryptography import x509

    from router import pki

    cert = x509.load_der_x509_certificate(_fetch_peer_certificate(host, port, timeout))
    Path(out).parent.mkdir(mode=pki.DIR_MODE, parents=True, exist_ok=True)
    pki.write_certificate(out, cert)
    click.echo(f"saved the certificate of {host}:{port} (CN '{pki.common_name(cert)}', "
               f"SHA-256 {pki.fingerprint(cert)}) to {out}; check the fingerprint with the "
               "parent's operator")


def _exchange(host: str, port: int, trusted: bytes, payload: bytes, request_id: str,
              timeout: float) -> dict[str, object]:
    """Send one request over TLS to a parent whose certificate must be ``trusted`` (DER)
    and return the ``result`` of the response with ``request_id``."""
    import socket
    import ssl
    import time

    import orjson

    from router.protocol import netstring

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE         # checked below against the saved certificate
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock) as tls_sock:
            if tls_sock.getpeercert(binary_form=True) != trusted:
                raise click.ClickException(
                    f"{host}:{port} presents a certificate other than the saved one; "
                    "not sending the request (run 'router pki save-cert' again only if "
                    "the parent's certificate really changed)")
            tls_sock.sendall(netstring.encode(payload))
            decoder = netstring.NetstringDecoder(64 * 1024 * 1024)
            while time.monotonic() < deadline:
                tls_sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = tls_sock.recv(65536)
                if not data:
                    break
                for frame in decoder.feed(data):
                    try:
                        message = orjson.loads(frame)
                    except orjson.JSONDecodeError as exc:
                        raise click.ClickException(f"{host}:{port} sent a frame that is "
                                                   f"not JSON: {exc}") from None
                    if isinstance(message, dict) and message.get("id") == request_id:
                        if "error" in message:
                            raise click.ClickException(f"the parent refused the request: "
                                                       f"{message['error']}")
                        result = message.get("result")
                        if not isinstance(result, dict):
                            raise click.ClickException("the parent's answer has no result")
                        return result
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"certificate request to {host}:{port} failed: {exc}") \
            from None
    raise click.ClickException(f"no answer from {host}:{port} within {timeout:g} s")


@pki_group.command("request")
@click.option("--host", required=True, help="The parent node (master or satellite).")
@click.option("--port", default=5665, show_default=True, type=click.IntRange(1, 65535))
@click.option("--cn", required=True, help="Our endpoint name (the certificate's CN).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Our data directory: DATA_DIR/certs/CN.key, CN.crt, ca.crt.")
@click.option("--ticket", default="", help="Ticket from the signer's operator "
                                           "('router pki ticket'); without one the request "
                                           "waits for 'router ca sign'.")
@click.option("--trusted-cert", type=click.Path(dir_okay=False), default=None,
              help="The parent's saved certificate (default DATA_DIR/certs/"
                   "trusted-parent.crt, see 'router pki save-cert').")
@click.option("--new-key", is_flag=True,
              help="Rotate the key: ask for a certificate for a new key (kept as CN.key.new "
                   "until it is signed; needs a ticket or 'router ca sign').")
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True,
              help="Type of a key this command creates.")
@click.option("--timeout", default=30.0, show_default=True, type=float)
def pki_request(host: str, port: int, cn: str, data_dir: str, ticket: str,
                trusted_cert: str | None, new_key: bool, key_type: str,
                timeout: float) -> None:
    """Ask a parent to sign our certificate (Icinga's 'pki request'; run it again to fetch
    a certificate that was pending)."""
    import uuid

    import orjson
    from cryptography.hazmat.primitives import serialization

    from router import pki

    certs = _certs_dir(data_dir)
    key_path, cert_path = certs / f"{cn}.key", certs / f"{cn}.crt"
    # The key (and self-signed certificate) the request is for: ours, or a new one.
    req_key_path, req_cert_path = ((certs / f"{cn}.key.new", certs / f"{cn}.crt.new")
                                   if new_key else (key_path, cert_path))
    trusted_path = Path(trusted_cert) if trusted_cert else certs / "trusted-parent.crt"
    ca_path = certs / "ca.crt"
    with operator_errors():
        if not trusted_path.exists():
            raise click.ClickException(f"{trusted_path} does not exist: save the parent's "
                                       f"certificate first ('router pki save-cert --host "
                                       f"{host} --port {port} --out {trusted_path}')")
        trusted = pki.load_certificates(trusted_path, "trusted parent certificate")[0]
        if req_key_path.exists():
            key = pki.load_private_key(req_key_path)
        else:
            certs.mkdir(mode=pki.DIR_MODE, parents=True, exist_ok=True)
            key = pki.generate_key(key_type)
            pki.write_private_key(req_key_path, key)
            pki.write_certificate(req_cert_path, pki.self_signed_certificate(key, cn))
            click.echo(f"created {req_key_path} and a self-signed {req_cert_path}")
        if req_cert_path.exists():
            own = pki.load_certificates(req_cert_path)[0]
        else:   # kept: the same request (fingerprint) when this command runs again
            own = pki.self_signed_certificate(key, cn)
            pki.write_certificate(req_cert_path, own)
        if not pki.same_public_key(own, key):
            raise click.ClickException(f"{req_cert_path} does not belong to {req_key_path}")
        request_id = str(uuid.uuid4())
        payload = orjson.dumps({
            "id": request_id, "jsonrpc": "2.0", "method": "pki::RequestCertificate",
            "params": {"cert_request": pki.certificate_pem(own), "ticket": ticket}})
        result = _exchange(host, port, trusted.public_bytes(serialization.Encoding.DER),
                           payload, request_id, timeout)
        ca_certs = _keep_ca(ca_path, result.get("ca"))
        status, error = result.get("status_code"), result.get("error")
        if status == 2:
            click.echo(f"pending: {error} (fingerprint {result.get('fingerprint_request')}); "
                       "run this command again once it is signed")
            return
        if status != 0:
            raise click.ClickException(str(error or f"status {status!r}"))
        text = result.get("cert")
        if not isinstance(text, str):
            raise click.ClickException("the parent's answer holds no certificate")
        cert = pki.parse_request(text)
        if not pki.same_public_key(cert, key):
            raise click.ClickException("the parent's certificate does not certify our key; "
                                       "not installing it")
        if not ca_certs or not any(pki.signed_by(cert, ca) for ca in ca_certs):
            raise click.ClickException(f"the parent's certificate is not signed by the CA in "
                                       f"{ca_path}; not installing it")
        if new_key:
            # Staged, key, certificate (finish_key_rotation completes it after a crash);
            # the pending key goes last, the only copy of the key until then (review).
            pki.install_key_pair(key_path, cert_path, key, cert)
            req_key_path.unlink(missing_ok=True)
        else:
            pki.write_certificate(cert_path, cert)
    click.echo(f"installed {cert_path}{' with a new key' if new_key else ''}: CN "
               f"'{pki.common_name(cert)}', valid until {cert.not_valid_after_utc:%Y-%m-%d}, "
               f"with the CA in {ca_path}")


def _keep_ca(ca_path: Path, ca_text: object) -> list[x509.Certificate]:
    """The CAs to check the answer against: the ones we have (every certificate of the
    bundle: during a CA rollover ca.crt holds the old and the new CA, in either order), or
    (first enrollment, trust on first use of the saved parent) the one the parent sent,
    which is then written. A different CA from the parent never replaces ours."""
    from router import pki

    theirs = pki.parse_request(ca_text) if isinstance(ca_text, str) and ca_text else None
    if ca_path.exists():
        ours = pki.load_certificates(ca_path, "CA certificate")
        if theirs is not None and theirs not in ours:
            click.echo(f"warning: the parent sent another CA than the one in {ca_path}; "
                       "keeping ours", err=True)
        return ours
    if theirs is not None:
        pki.write_certificate(ca_path, theirs)
        return [theirs]
    return []


@pki_group.command("status")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False))
@click.option("--cn", default=None, help="Our endpoint name (default: the only NAME.crt "
                                         "in DATA_DIR/certs besides ca.crt).")
def pki_status(data_dir: str, cn: str | None) -> None:
    """Where this node's certificate and the requests it stores stand."""
    import datetime as dt

    from router import pki

    certs = _certs_dir(data_dir)
    with operator_errors():
        if cn is None:
            names = sorted(p.stem for p in certs.glob("*.crt")
                           if p.name not in ("ca.crt", "trusted-parent.crt"))
            if len(names) != 1:
                raise click.ClickException(f"give --cn (certificates in {certs}: "
                                           f"{', '.join(names) or 'none'})")
            cn = names[0]
        cert_path = certs / f"{cn}.crt"
        ca_path = certs / "ca.crt"
        now = dt.datetime.now(dt.timezone.utc)
        if not cert_path.exists():
            click.echo(f"certificate: none ({cert_path} missing): run 'router pki new-cert' "
                       "or 'router pki request'")
        else:
            cert = pki.load_certificates(cert_path)[0]
            days = (cert.not_valid_after_utc - now).total_seconds() / 86400
            anchors = pki.load_certificates(ca_path) if ca_path.exists() else []
            if cert.issuer == cert.subject and pki.signed_by(cert, cert):
                state = "self-signed: not enrolled yet (run 'router pki request')"
            elif any(pki.signed_by(cert, ca) for ca in anchors):
                state = "signed by the CA in " + str(ca_path)
                if days < 30:
                    state += "; due for renewal (less than 30 days left)"
            else:
                state = f"NOT signed by the CA in {ca_path}"
            click.echo(f"certificate: {cert_path}\n  CN '{pki.common_name(cert)}', "
                       f"expires {cert.not_valid_after_utc:%Y-%m-%d} ({days:.0f} days)\n"
                       f"  {state}")
        signer = (Path(data_dir) / "ca" / "ca.key").exists()
        click.echo(f"signer: {'yes (DATA_DIR/ca holds the CA key)' if signer else 'no'}")
        listing = pki.RequestStore(data_dir).list(include_removed=True)
        counts = {"pending": 0, "signed": 0, "removed": 0}
        for r in listing.requests:
            counts["removed" if r.removed else "signed" if r.signed else "pending"] += 1
        click.echo(f"stored requests: {counts['pending']} pending, {counts['signed']} "
                   f"signed, {counts['removed']} removed"
                   + (f", {len(listing.corrupt)} unreadable" if listing.corrupt else ""))
        for r in listing.requests:
            if not r.removed and not r.signed:
                click.echo(f"  pending {r.fingerprint} CN '{r.common_name}': waiting for "
                           + ("'router ca sign' here" if signer else
                              "the signer (forwarded to the parent zone)"))
