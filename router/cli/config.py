"""``router config check|import-zones|zones``: validate and convert configuration, show
what config sync holds and sends."""

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
    for advice in config_mod.advisories(cfg):
        click.echo(f"{path}: warning: {advice}")


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

    with operator_errors():
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise click.ClickException(f"{path}: not UTF-8 text ({exc.reason} at byte "
                                       f"{exc.start})") from None
        out = zonesconf.zones_conf_to_toml(text, path, node_name=node_name, data_dir=data_dir)
    click.echo(out, nl=False)


@config.command("zones")
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False), help="The node's configuration.")
@click.option("--zone", "zone", help="Show what an endpoint of this zone receives.")
@click.option("--endpoint", "endpoint", help="Show what this endpoint receives.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the config::Update params the endpoint would be sent.")
def config_zones(config_path: str, zone: str | None, endpoint: str | None,
                 as_json: bool) -> None:
    """The zones this node holds for config sync (DATA_DIR/api/zones and zones_dir),
    or what a given zone's or endpoint's config::Update would carry. Reads only."""
    import os
    import time

    import orjson

    from router import config as config_mod
    from router.errors import ConfigError
    from router.features.configsync import relay
    from router.features.configsync.component import held_zones
    from router.features.configsync.files import update_params
    from router.routing import Topology

    with operator_errors():
        cfg = config_mod.load_config(config_path)
        topology = Topology(cfg.zones, cfg.endpoints, cfg.node.name)
        if endpoint is not None:
            zone_of = topology.zone_of(endpoint)
            if zone_of is None:
                raise ConfigError(f"endpoint {endpoint!r} is not in any configured zone")
            if zone is not None and zone != zone_of:
                raise ConfigError(f"endpoint {endpoint!r} is in zone {zone_of!r}, not {zone!r}")
            zone = zone_of
        if zone is not None and topology.zone(zone) is None:
            raise ConfigError(f"zone {zone!r} is not configured")
        try:
            zones = held_zones(topology, os.path.join(cfg.node.data_dir, "api"),
                               cfg.node.zones_dir, cfg.node.accept_config, time.time())
        except OSError as exc:
            raise click.ClickException(f"cannot read the zones: {exc}") from exc
    names = sorted(zones) if zone is None else relay.zones_for(topology, zone, zones)
    if as_json:
        click.echo(orjson.dumps(update_params([zones[n] for n in names]),
                                option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return
    if zone is not None:
        who = f"endpoint {endpoint}" if endpoint else f"an endpoint of zone {zone}"
        if not topology.is_ancestor(topology.local_zone, zone):
            click.echo(f"{who} is not below zone {topology.local_zone}: this node sends it "
                       f"no configuration")
            return
        click.echo(f"{who} receives {len(names)} zones:")
    for name in names:
        z = zones[name]
        ts = z.timestamp
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
        click.echo(f"{name}: {len(z.files)} files, {z.size} bytes, checksum "
                   f"{z.digest[:16]}, changed {when}")
        for path, digest in z.checksums.items():
            click.echo(f"  {path}  {digest[:16]}")
