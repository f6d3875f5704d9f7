"""``router ca list|sign|remove|restore``: on-demand signing of stored certificate requests.

They work on ``DATA_DIR/certificate-requests`` (Icinga's layout, ``router.pki.requests``)
and, for ``sign``, the CA in ``DATA_DIR/ca``. A running node notices what they did within
a second (it watches the directory) and hands a just-signed certificate to a requester that
is still connected; a satellite's requests reach it when the signer's node delivers the
certificate (docs/pki.md).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from router.cli.common import DEFAULT_DATA_DIR, operator_errors

__all__ = ["ca_group"]

_DATA_DIR = click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
                         type=click.Path(file_okay=False),
                         help="The node's data directory (holds certificate-requests/ "
                              "and, for signing, ca/).")


@click.group("ca")
def ca_group() -> None:
    """List, sign, decline and restore certificate requests (on-demand signing)."""


def _state(request: object) -> str:
    from router.pki import CertRequest

    assert isinstance(request, CertRequest)
    if request.removed:
        return "removed"
    return "signed" if request.signed else "pending"


@ca_group.command("list")
@_DATA_DIR
@click.option("--all", "show_all", is_flag=True,
              help="Also list signed and removed requests (default: pending only).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ca_list(data_dir: str, show_all: bool, as_json: bool) -> None:
    """List certificate requests (pending ones unless --all)."""
    from router import pki

    store = pki.RequestStore(data_dir)
    listing = store.list(include_removed=show_all)
    requests = [r for r in listing.requests if show_all or not r.signed]
    for path, why in listing.corrupt:
        click.echo(f"warning: skipping {path}: {why}", err=True)
    if as_json:
        doc = {}
        for r in requests:
            cert = r.certificate
            entry: dict[str, object] = {
                "cert_request": r.cert_request, "subject": cert.subject.rfc4514_string(),
                "common_name": r.common_name, "state": _state(r),
                "timestamp": r.mtime, "not_before": cert.not_valid_before_utc.isoformat()}
            if r.cert_response:
                entry["cert_response"] = r.cert_response
            doc[r.fingerprint] = entry
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if not requests:
        click.echo(f"no {'' if show_all else 'pending '}certificate requests in "
                   f"{store.directory}")
        return
    click.echo(f"{'Fingerprint':64}  {'Received (UTC)':19}  {'State':7}  Subject")
    for r in requests:
        when = dt.datetime.fromtimestamp(r.mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{r.fingerprint}  {when}  {_state(r):7}  CN = {r.common_name}")


@ca_group.command("sign")
@click.argument("fingerprint")
@_DATA_DIR
@click.option("--valid-days", default=397, show_default=True, type=click.IntRange(1, 36500),
              help="Validity of the signed certificate.")
def ca_sign(fingerprint: str, data_dir: str, valid_days: int) -> None:
    """Sign the pending request FINGERPRINT with the CA in DATA_DIR/ca."""
    from router import pki

    with operator_errors():
        store = pki.RequestStore(data_dir)
        request = store.get(fingerprint)
        if request is None:
            if store.is_removed(fingerprint):
                raise click.ClickException(f"request {fingerprint} was removed; "
                                           f"'router ca restore {fingerprint}' first")
            raise click.ClickException(f"no certificate request {fingerprint} in "
                                       f"{store.directory}")
        if request.signed:
            click.echo(f"request {fingerprint} (CN '{request.common_name}') is already "
                       "signed")
            return
        ca_cert, ca_key = pki.load_ca(Path(data_dir) / "ca")
        cert = pki.sign_request(ca_cert, ca_key, request.certificate, days=valid_days)
        store.set_response(fingerprint, pki.certificate_pem(cert))
    click.echo(f"signed the certificate request for CN '{request.common_name}' "
               f"(valid until {cert.not_valid_after_utc:%Y-%m-%d}); a running node hands "
               "it out on the next request or at once to a connected requester")


@ca_group.command("remove")
@click.argument("fingerprint")
@_DATA_DIR
def ca_remove(fingerprint: str, data_dir: str) -> None:
    """Decline request FINGERPRINT: further requests for it are refused."""
    from router import pki

    with operator_errors():
        store = pki.RequestStore(data_dir)
        store.remove(fingerprint)
    click.echo(f"removed certificate request {fingerprint}")


@ca_group.command("restore")
@click.argument("fingerprint")
@_DATA_DIR
def ca_restore(fingerprint: str, data_dir: str) -> None:
    """Undo 'router ca remove FINGERPRINT'."""
    from router import pki

    with operator_errors():
        store = pki.RequestStore(data_dir)
        store.restore(fingerprint)
    click.echo(f"restored certificate request {fingerprint}")


@ca_group.command("revoke")
@click.argument("fingerprint", required=False)
@_DATA_DIR
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False, exists=True),
              default=None, help="Revoke this certificate file instead of a request's.")
@click.option("--crl", "crl_file", type=click.Path(dir_okay=False), default=None,
              help="The CRL to update (default DATA_DIR/ca/ca.crl).")
def ca_revoke(fingerprint: str | None, data_dir: str, cert_file: str | None,
              crl_file: str | None) -> None:
    """Revoke the certificate signed for request FINGERPRINT (or --cert FILE).

    The CRL is re-signed by the CA in DATA_DIR/ca; nodes that load it ([tls] crl_file)
    refuse the certificate in the TLS handshake.
    """
    from router import pki

    with operator_errors():
        if (fingerprint is None) == (cert_file is None):
            raise click.UsageError("give either FINGERPRINT or --cert FILE")
        if cert_file is not None:
            cert = pki.load_certificates(cert_file)[0]
        else:
            assert fingerprint is not None
            request = pki.RequestStore(data_dir).get(fingerprint)
            if request is None or not request.cert_response:
                raise click.ClickException(f"no signed certificate for request {fingerprint}"
                                           " (give --cert FILE for others)")
            cert = pki.parse_request(request.cert_response)
        ca_cert, ca_key = pki.load_ca(Path(data_dir) / "ca")
        path = Path(crl_file) if crl_file else Path(data_dir) / "ca" / pki.CRL_NAME
        try:
            pki.revoke(ca_cert, ca_key, path, [cert])
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"revoked the certificate for CN '{pki.common_name(cert)}' (serial "
               f"{cert.serial_number:x}) in {path}")
