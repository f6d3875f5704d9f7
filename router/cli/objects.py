"""``router objects list|forget``: the hosts a node learned (``[objects] unknown = "learn"``).

With learning on, the first child zone that reports an unconfigured host owns it, and the
node keeps that in ``DATA_DIR/objects/learned-hosts.json`` across restarts. An operator who
finds a host owned by the wrong agent (it reported first) forgets it here; the next report
decides again, or better, the host goes into ``[objects.hosts]``. Both commands work
while the node runs: it notices the edited file within a second.
"""

from __future__ import annotations

import time

import click
import orjson

from router.cli.common import DEFAULT_DATA_DIR, operator_errors

__all__ = ["objects_group"]

_DATA_DIR = click.option(
    "--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
    type=click.Path(file_okay=False),
    help="The node's data directory ([node] data_dir).")


@click.group("objects")
def objects_group() -> None:
    """Show or clear the host owners a node learned from its child zones."""


@objects_group.command("list")
@_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print host -> {zone, learned_at}.")
def objects_list(data_dir: str, as_json: bool) -> None:
    """Learned hosts with the zone that owns each and when it was learned."""
    from router.node.learned import learned_path, read_learned

    with operator_errors():
        entries = read_learned(learned_path(data_dir))
    if as_json:
        click.echo(orjson.dumps(entries, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
                   .decode())
        return
    if not entries:
        click.echo(f"no learned hosts in {learned_path(data_dir)}")
        return
    width = max(8, *(len(h) for h in entries))
    click.echo(f"{'HOST':{width}}  {'ZONE':24}  LEARNED AT (UTC)")
    for host in sorted(entries):
        entry = entries[host]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["learned_at"])) \
            if entry["learned_at"] else "-"
        click.echo(f"{host:{width}}  {entry['zone']:24}  {when}")
    click.echo(f"{len(entries)} learned hosts")


@objects_group.command("forget")
@_DATA_DIR
@click.argument("hosts", nargs=-1, required=True)
def objects_forget(data_dir: str, hosts: tuple[str, ...]) -> None:
    """Forget learned HOSTS: the next child zone that reports one owns it."""
    from router.node.learned import forget_hosts, learned_path

    path = learned_path(data_dir)
    if not path.parent.is_dir():
        raise click.ClickException(f"{path}: no learned hosts here")
    with operator_errors():
        removed = forget_hosts(path, list(hosts))
    for host, zone in removed.items():
        click.echo(f"forgot {host} (was owned by zone {zone})")
    missing = [h for h in hosts if h not in removed]
    if missing:
        raise click.ClickException(f"not learned hosts: {', '.join(missing)}")
