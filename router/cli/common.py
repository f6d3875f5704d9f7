"""What the commands share: the errors they report as one line, the data-dir default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from checkers.errors import CheckerError
from replaylog.errors import ReplayLogError
from router.errors import RouterError

__all__ = ["DEFAULT_DATA_DIR", "OPERATOR_ERRORS", "checked_url", "operator_errors"]

#: What a command reports as a one-line error instead of a traceback: the roots of the
#: router's, the check executors' and the replay log's exception trees (the lower two do
#: not import ``router``, so they have roots of their own), and a file or directory
#: that cannot be read or written (the message names it).
OPERATOR_ERRORS = (RouterError, CheckerError, ReplayLogError, OSError)

#: Where ``router serve`` without a configuration keeps its certificates and replay log.
DEFAULT_DATA_DIR = "router-data"


@contextmanager
def operator_errors() -> Iterator[None]:
    """Report an :data:`OPERATOR_ERRORS` error as click does: ``Error: ...``, exit code 1."""
    try:
        yield
    except OPERATOR_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


def checked_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A ``--url`` option's callback: a value ``urllib`` cannot parse (a bracket left open,
    a port out of range) is a usage error, not a traceback from deep inside the request."""
    from urllib.parse import urlsplit

    try:
        urlsplit(value if "://" in value else f"http://{value}").port
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a usable URL ({exc})") from None
    return value
