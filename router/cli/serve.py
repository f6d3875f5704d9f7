"""``router serve`` (one node) and ``router checker`` (one check executor it starts)."""

from __future__ import annotations

import dataclasses
import socket
import sys
from pathlib import Path

import click

from router.cli.common import DEFAULT_DATA_DIR, OPERATOR_ERRORS, operator_errors

__all__ = ["checker", "serve"]


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file.")
@click.option("--node-name", help="Endpoint name of this node (certificate CN).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Data directory; certificates are read from DIR/certs/ "
                   "(ca.crt, NAME.crt, NAME.key).")
@click.option("--zones", "zones_file", type=click.Path(dir_okay=False),
              help="Zones and endpoints: our TOML or an Icinga zones.conf.")
@click.option("--listen", help="Cluster listener HOST:PORT, or 'none' for an outbound-only node.")
@click.option("--status-listen", help="Status/metrics HTTP listener HOST:PORT, or 'none'.")
@click.option("--accept-commands/--no-accept-commands", default=None,
              help="Accept event::ExecuteCommand from the parent zone.")
@click.option("--accept-config/--no-accept-config", default=None,
              help="Accept zone configuration (config::Update) from the parent zone and "
                   "relay it to the zones below (config sync).")
@click.option("--zones-dir", type=click.Path(file_okay=False, exists=True),
              help="Authoritative zone configuration to serve, laid out like Icinga's "
                   "zones.d: DIR/<zone>/**.")
@click.option("--log-level", default=None,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]),
              help="Log lines as text (default) or one JSON object per line "
                   "(overrides [node] log_format).")
@click.option("--ticket-salt", default=None,
              help="TicketSalt for signing certificate requests with a ticket (overrides "
                   "[pki] ticket_salt; see docs/pki.md).")
@click.option("--ticket", default=None,
              help="Enroll this node: store the ticket (DATA_DIR/certs/ticket), make a key "
                   "and a self-signed certificate if there is none, and ask the parent zone "
                   "to sign it (needs certs/ca.crt; see docs/pki.md).")
def serve(config_path: str | None, node_name: str | None, data_dir: str | None,
          zones_file: str | None, listen: str | None, status_listen: str | None,
          accept_commands: bool | None, log_level: str | None,
          ticket_salt: str | None, accept_config: bool | None = None,
          zones_dir: str | None = None, log_format: str | None = None,
          ticket: str | None = None) -> None:
    """Run one node of a cluster.

    With no options at all, a standalone node named after this host starts from
    ./router-data: its own CA and certificate are created there on first start, it
    listens on 127.0.0.1:5665 and prints where its status page is.
    """
    from router import app, config as config_mod, pki
    from router.ops.logs import setup_logging

    with operator_errors():
        base = config_mod.load_config(config_path) if config_path else None
        created_pki = None
        if base is None:
            node_name = node_name or socket.gethostname().split(".")[0] or "router"
            data_dir = data_dir or DEFAULT_DATA_DIR
            certs = Path(data_dir) / "certs"
            if ticket is None and (not (certs / f"{node_name}.crt").exists()
                                   or not (certs / "ca.crt").exists()):
                from router.node.filemodes import check_writable
                check_writable(data_dir)   # one line, not a traceback from mkdir
                created_pki = pki.ensure_node_pki(data_dir, node_name)
        cfg = config_mod.quickstart_config(
            node_name=node_name, data_dir=data_dir, zones_file=zones_file, listen=listen,
            status_listen=status_listen, base=base, accept_commands=accept_commands,
            accept_config=accept_config, zones_dir=zones_dir)
        if ticket_salt is not None:
            cfg = dataclasses.replace(cfg, pki=dataclasses.replace(cfg.pki,
                                                                   ticket_salt=ticket_salt))
        if ticket is not None:
            from router.node import enrollment
            enrollment.prepare_self_enrollment(cfg.tls, cfg.node.name, ticket)
    setup_logging(log_level or cfg.log_level,
                  log_format or (base.node.log_format if base is not None else "text"))
    if created_pki is not None:
        click.echo(f"created CA and certificate for {cfg.node.name} in {cfg.node.data_dir}",
                   err=True)
    ready = None
    if cfg.status_listen is not None:
        host = cfg.status_listen[0]
        ready = (f"router: node {cfg.node.name} is up; status at "
                 f"http://{host}:{{status_port}}/v1/status (metrics: /metrics, "
                 f"results: /v1/objects/checkresults). Ctrl-C stops it.")
    from router.cli.reload import config_source
    reread = config_source(  # a reload (SIGHUP, router reload) builds it the same way
        config_path, ticket_salt=ticket_salt, node_name=node_name, data_dir=data_dir,
        zones_file=zones_file, listen=listen, status_listen=status_listen,
        accept_commands=accept_commands, accept_config=accept_config, zones_dir=zones_dir)
    try:
        sys.exit(app.serve(cfg, ready, reread))
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option("--socket", "socket_path", required=True,
              help="Unix socket of the router's check pool to connect to.")
@click.option("--max-inflight", type=int, default=None,
              help="Checks this executor runs at once.")
@click.option("--log-level", default="WARNING", show_default=True)
def checker(socket_path: str, max_inflight: int | None, log_level: str) -> None:
    """Run one check-executor process (router serve starts and supervises these)."""
    from checkers import worker

    args = ["--socket", socket_path, "--log-level", log_level]
    if max_inflight is not None:
        args += ["--max-inflight", str(max_inflight)]
    sys.exit(worker.main(args))
