"""``router check cluster|cluster-zone``: Icinga's cluster health checks as plugins.

Each command reads a running node's ``/v1/status`` and prints what Icinga's built-in
check of the same name prints, with a monitoring plugin's exit code (0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN), so it drops into an existing ``CheckCommand`` (see
docs/operations.md). The logic is in ``router.ops.health``.
"""

from __future__ import annotations

import sys

import click

__all__ = ["check_group"]

DEFAULT_URL = "http://127.0.0.1:9665"


def _emit(outcome: object) -> None:
    from router.ops.health import CheckOutcome

    assert isinstance(outcome, CheckOutcome)
    click.echo(outcome.plugin_text())
    sys.exit(outcome.state)


def _status(url: str, timeout: float) -> object:
    """The status document, or an UNKNOWN outcome naming why it could not be read."""
    from router.ops import health, statusview
    from router.errors import RouterError

    try:
        return statusview.fetch_status(url, timeout=timeout)
    except RouterError as exc:
        return health.unreachable(str(exc))


class PluginCommand(click.Command):
    """A check whose usage errors are UNKNOWN (exit 3), as the monitoring plugins
    guidelines want, not click's exit 2, which Icinga reads as CRITICAL: a cluster
    alarm for a typo in a CheckCommand (review)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(f"UNKNOWN: {exc.format_message()}")
            ctx.exit(3)


@click.group("check")
def check_group() -> None:
    """Icinga's cluster health checks against a running node (plugin output)."""


@check_group.command("cluster-zone", cls=PluginCommand)
@click.option("--zone", default="", help="Zone to check (Icinga's cluster_zone; left out: "
              "UNKNOWN, as Icinga's check without the macro).")
@click.option("--url", default=DEFAULT_URL, show_default=True,
              help="Base URL of the node's status listener.")
@click.option("--lag-warning", type=float, default=None,
              help="WARNING above this log lag in seconds (cluster_lag_warning).")
@click.option("--lag-critical", type=float, default=None,
              help="CRITICAL above this log lag in seconds (cluster_lag_critical).")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the node.")
def check_cluster_zone(zone: str, url: str, lag_warning: float | None,
                       lag_critical: float | None, timeout: float) -> None:
    """Is ZONE connected, and how far behind are its messages?"""
    from router.ops import health

    status = _status(url, timeout)
    if isinstance(status, health.CheckOutcome):
        _emit(status)
    assert isinstance(status, dict)
    _emit(health.cluster_zone(status, zone, lag_warning=lag_warning,
                              lag_critical=lag_critical))


@check_group.command("cluster", cls=PluginCommand)
@click.option("--url", default=DEFAULT_URL, show_default=True,
              help="Base URL of the node's status listener.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the node.")
def check_cluster(url: str, timeout: float) -> None:
    """Are all configured endpoints connected?"""
    from router.ops import health

    status = _status(url, timeout)
    if isinstance(status, health.CheckOutcome):
        _emit(status)
    assert isinstance(status, dict)
    _emit(health.cluster(status))
