"""``router config check|import-zones``: validate and convert configuration."""

from __future__ import annotations

from pathlib import Path

import click

from router.cli.common import operator_errors

__all__ = ["config"]


@click.group()
def config() -> None:
    """Validate and convert configuration."""


@config.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def config_check(path: str) -> None:
    """Validate a TOML configuration; errors name the line."""
    from router import config as config_mod

    with operator_errors():
        cfg = config_mod.load_config(path)
    click.echo(f"{path}: OK (node {cfg.node.name}, {len(cfg.zones)} zones, "
               f"{len(cfg.endpoints)} endpoints)")


@config.command("import-zones")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--node-name", help="Resolve NodeName in the file to this endpoint name.")
@click.option("--data-dir", help="data_dir for the [node] table (default: Icinga's "
              "/var/lib/icinga2, so existing certificates are used).")
def config_import_zones(path: str, node_name: str | None, data_dir: str | None) -> None:
    """Convert Icinga's zones.conf (Endpoint and Zone objects) to our TOML.

    Skipped objects and attributes are listed as '# warning:' comments in the output.
    """
    from router.config import zonesconf

    text = Path(path).read_text(encoding="utf-8")
    with operator_errors():
        out = zonesconf.zones_conf_to_toml(text, path, node_name=node_name, data_dir=data_dir)
    click.echo(out, nl=False)
