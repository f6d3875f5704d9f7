"""``router status``: what a running node reports on its status listener."""

from __future__ import annotations

import click
import orjson

from router.cli.common import checked_url, operator_errors

__all__ = ["status"]


@click.command()
@click.option("--url", default="http://127.0.0.1:9665", show_default=True,
              callback=checked_url, help="Base URL of the node's status listener.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw /v1/status document.")
def status(url: str, as_json: bool) -> None:
    """Show zones, endpoints, connections and rates of a running node."""
    from router.ops import statusview

    with operator_errors():
        doc = statusview.fetch_status(url)
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(statusview.format_status(doc))
