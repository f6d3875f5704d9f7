"""The ``router`` command group, with the commands of the other modules added."""

from __future__ import annotations

import click

from router.cli.ca import ca_group
from router.cli.check import check_group
from router.cli.config import config
from router.cli.objects import objects_group
from router.cli.perf import perf
from router.cli.pki import pki_group
from router.cli.reload import reload
from router.cli.replaylog import replaylog_group
from router.cli.serve import checker, serve
from router.cli.status import status
from router.cli.writers import writers_group

__all__ = ["main"]


@click.group()
@click.version_option(package_name="router")
def main() -> None:
    """Cluster message router speaking the Icinga 2 cluster protocol."""


main.add_command(serve)
main.add_command(checker)
main.add_command(config)
main.add_command(status)
main.add_command(replaylog_group)
main.add_command(pki_group)
main.add_command(ca_group)
main.add_command(perf)
main.add_command(objects_group)
main.add_command(reload)
main.add_command(check_group)
main.add_command(writers_group)
