"""``router reload``: ask a running node to reload its configuration, print the outcome.

It posts to the node's status listener (``POST /v1/actions/reload``), which answers once
the reload is done: the same as ``kill -HUP`` (systemd's ``ExecReload``), but the caller
learns whether it worked and, when it was refused, the exact error ``router config
check`` would print. :func:`config_source` is how ``router serve`` reads its
configuration again on a reload: the same files and command-line options as at start.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import orjson

from router.cli.common import checked_url

if TYPE_CHECKING:  # pragma: no cover
    from router.config import RouterConfig

__all__ = ["reload", "config_source", "post_reload", "format_record"]

#: How long ``router reload`` waits for the node's answer (a reload's own deadline is 30 s).
TIMEOUT = 40.0


def config_source(config_path: str | None, *, ticket_salt: str | None = None,
                  **options: Any) -> Callable[[], RouterConfig]:
    """A function that builds the configuration the way ``router serve`` did at start:
    the same ``--config`` file read again, the same command-line ``options`` (passed to
    ``quickstart_config``, so a ``--zones`` file is read again too) and ticket salt."""

    def load() -> RouterConfig:
        from router import config as config_mod

        base = config_mod.load_config(config_path) if config_path else None
        cfg = config_mod.quickstart_config(base=base, **options)
        if ticket_salt is not None:
            cfg = dataclasses.replace(cfg, pki=dataclasses.replace(cfg.pki,
                                                                   ticket_salt=ticket_salt))
        return cfg

    return load


def post_reload(url: str, timeout: float = TIMEOUT, token: str | None = None
                ) -> tuple[int, dict[str, Any]]:
    """POST ``URL/v1/actions/reload``: (HTTP status, the JSON answer). ``token``: the
    node's admin token (``[status] admin_token``), which the route needs once one is
    configured (docs/console.md).

    Raises:
        OSError: the node cannot be reached (the message says why).
    """
    import urllib.error
    import urllib.request

    base = url if "://" in url else f"http://{url}"
    request = urllib.request.Request(base.rstrip("/") + "/v1/actions/reload", data=b"",
                                     method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body)
        except orjson.JSONDecodeError:
            return exc.code, {"error": body.decode("utf-8", "replace").strip()}
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {base}: {exc.reason}") from None


def format_record(record: dict[str, Any]) -> str:
    """The outcome in a few lines: result and duration, error, what changed."""
    result = record.get("result") or "error"
    lines = []
    duration = record.get("duration")
    took = f" in {duration * 1000:.0f} ms" if isinstance(duration, (int, float)) else ""
    if result == "ok":
        lines.append(f"reload applied{took}")
    else:
        lines.append(f"reload {result}{took}: {record.get('error')}")
    changes = record.get("changes") or {}
    if changes:
        for key, value in changes.items():
            lines.append(f"  {key}: {', '.join(value) if isinstance(value, list) else value}")
    elif result == "ok":
        lines.append("  nothing changed")
    closed = record.get("sessions_closed") or []
    if closed:
        lines.append(f"  sessions closed: {', '.join(closed)}")
    restart = record.get("restart_required") or []
    if restart:
        lines.append(f"  needs a restart to apply: {', '.join(restart)}")
    return "\n".join(lines)


@click.command()
@click.option("--url", default=os.environ.get("ROUTER_STATUS_URL", "http://127.0.0.1:9665"),
              show_default=True, callback=checked_url,
              help="Base URL of the node's status listener.")
@click.option("--json", "as_json", is_flag=True, help="Print the reload record as JSON.")
@click.option("--token", envvar="ROUTER_ADMIN_TOKEN", default=None,
              help="The node's admin token ([status] admin_token; default: "
                   "$ROUTER_ADMIN_TOKEN). Without it, the local token the node wrote to "
                   "DATA_DIR/reload.token is used.")
@click.option("--data-dir", envvar="ROUTER_DATA_DIR", default="router-data",
              show_default=True, type=click.Path(file_okay=False),
              help="The node's data directory, where its local reload token is.")
def reload(url: str, as_json: bool, token: str | None, data_dir: str) -> None:
    """Reload a running node's configuration without dropping its sessions.

    The node's status listener takes actions only with a token: the admin token, or the
    local one the node writes to its data directory at every start (so a reload needs
    read access to the data directory).

    Exit code 0 when applied, 1 when refused or failed (the node keeps running on its
    previous configuration when it refused), 2 when the node cannot be reached.
    """
    if not token:
        from router.node.consoleweb import read_local_token
        token = read_local_token(data_dir)
    try:
        status, record = post_reload(url, token=token)
    except OSError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    elif "result" not in record:
        click.echo(f"Error: HTTP {status}: {record.get('error', record)}", err=True)
    else:
        click.echo(format_record(record))
    sys.exit(0 if status == 200 and record.get("result") == "ok" else 1)
