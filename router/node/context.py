"""What every collaborator of the node reads from it, as one ``typing.Protocol``.

``Sessions``, ``Executions``, ``Housekeeping``, ``Enrollment`` and ``ReplayManager`` are
composed into ``Node`` and typed against Protocols of what they use, so they never import
``router.node.core`` (which imports them). The members all of them share live here once;
each collaborator's own Protocol extends this one with what only it needs.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from router.config import RouterConfig
from router.routing import Topology
from router.transport.owner import RateLimitedLogger

__all__ = ["NodeContext"]


class NodeContext(Protocol):
    """The node as every collaborator sees it: its configuration, loop, name, zone tree
    and rate-limited log."""

    @property
    def config(self) -> RouterConfig: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def name(self) -> str: ...

    @property
    def topology(self) -> Topology: ...

    @property
    def ratelog(self) -> RateLimitedLogger: ...
