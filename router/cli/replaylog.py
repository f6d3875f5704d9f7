"""``router replaylog stats|dump|reset``: inspect or reset a node's replay log."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from router.cli.common import operator_errors

if TYPE_CHECKING:
    from replaylog import ReplayStore

__all__ = ["replaylog_group"]


@click.group("replaylog")
def replaylog_group() -> None:
    """Inspect or reset a node's replay log (DATA_DIR/replaylog)."""


def _open_log(data_dir: str) -> ReplayStore:
    from replaylog import ReplayStore

    path = Path(data_dir) / "replaylog"
    if not path.exists():
        raise click.ClickException(f"{path}: no replay log here")
    with operator_errors():
        return ReplayStore(path, readonly=True)


@replaylog_group.command("stats")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw statistics.")
def replaylog_stats(data_dir: str, as_json: bool) -> None:
    """Per zone: records, bytes, oldest/newest ts; per endpoint: confirmed position, lag."""
    store = _open_log(data_dir)
    try:
        stats = store.stats()
        positions = store.positions()
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps({"store": stats, "positions": positions},
                                option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{stats['path']}: {stats['records']} records, {stats['bytes']} bytes "
               f"(cap {stats['max_bytes']}), evicted {stats['evicted']}")
    click.echo(f"{'ZONE':24} {'RECORDS':>9} {'BYTES':>12} {'OLDEST TS':>18} {'NEWEST TS':>18}")
    for zone, z in sorted(stats["zones"].items()):
        click.echo(f"{zone:24} {z['records']:>9} {z['bytes']:>12} "
                   f"{z['oldest_ts'] or 0:>18.6f} {z['newest_ts'] or 0:>18.6f}")
    if positions:
        click.echo(f"{'ENDPOINT':24} {'CONFIRMED POSITION':>18}")
        for endpoint, position in sorted(positions.items()):
            click.echo(f"{endpoint:24} {position:>18.6f}")


@replaylog_group.command("dump")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--zone", help="Zone whose log to print.")
@click.option("--peer", help="Endpoint whose log to print (its zone's log; needs --config).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="The node's configuration, to find --peer's zone.")
@click.option("--since", type=float, default=None, help="Only records with ts > SINCE.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many records.")
def replaylog_dump(data_dir: str, zone: str | None, peer: str | None,
                   config_path: str | None, since: float | None, limit: int | None) -> None:
    """Print the logged messages waiting for a zone (or a peer) as JSON lines, oldest first.

    Logs are kept per zone: every endpoint of a zone is replayed from the same log.
    """
    if (zone is None) == (peer is None):
        raise click.UsageError("give exactly one of --zone and --peer")
    if peer is not None:
        if config_path is None:
            raise click.UsageError("--peer needs --config to find the peer's zone")
        from router import config as config_mod

        with operator_errors():
            cfg = config_mod.load_config(config_path)
        zone = next((z.name for z in cfg.zones if peer in z.endpoints), None)
        if zone is None:
            raise click.ClickException(f"endpoint {peer!r} is in no zone of {config_path}")
    assert zone is not None
    store = _open_log(data_dir)
    try:
        shown = 0
        for record in store.iter_from(zone, since if since is not None else float("-inf")):
            if limit is not None and shown >= limit:
                break
            payload = record.frame[record.frame.index(b":") + 1:-1]
            click.echo(orjson.dumps({"seq": record.seq, "ts": record.ts,
                                     "object_zone": record.object_zone,
                                     "message": orjson.loads(payload)}).decode())
            shown += 1
    finally:
        store.close()


@replaylog_group.command("reset")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
def replaylog_reset(data_dir: str) -> None:
    """Move a broken replay log aside and start an empty one (the node must be stopped)."""
    from replaylog import reset

    with operator_errors():
        moved = reset(Path(data_dir) / "replaylog")
    click.echo(f"moved the old log to {moved}" if moved else "no log to move; created an "
               "empty one")
