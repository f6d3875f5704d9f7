"""``router pki new-ca|issue|ticket``: a CA and node certificates, Icinga's layout."""

from __future__ import annotations

from pathlib import Path

import click

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

    cert, key = pki.issue_node_files(ca_dir, out_dir, node_name)
    click.echo(f"{cert}\n{key}")


@pki_group.command("ticket")
@click.option("--cn", required=True, help="Common name of the node.")
@click.option("--salt", required=True, help="The parent's TicketSalt.")
def pki_ticket(cn: str, salt: str) -> None:
    """Print the Icinga-compatible enrollment ticket for CN."""
    from router import pki

    click.echo(pki.ticket(cn, salt))
