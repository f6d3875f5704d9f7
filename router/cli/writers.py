"""``router writers reset``: move a broken writer queue aside."""

from __future__ import annotations

import click

from router.cli.common import operator_errors

__all__ = ["writers_group"]


@click.group("writers")
def writers_group() -> None:
    """The result writers' durable queue (DATA_DIR/writers-queue)."""


@writers_group.command("reset")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
def writers_reset(data_dir: str) -> None:
    """Move a broken writer queue aside (kept as writers-queue.broken-<time>); the node
    starts an empty one. Refused while a process has the queue open; one the node could
    not open is held by nobody, and a running node opens the new one within a minute.
    Results in the old queue that no backend had confirmed are not written."""
    from router.features.writers.queue import reset_shared_queue

    with operator_errors():
        moved = reset_shared_queue(data_dir)
    click.echo(f"moved the old writer queue to {moved}; the node starts an empty one"
               if moved else "no writer queue here; nothing to move")
