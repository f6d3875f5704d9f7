"""The node: the one place where sessions, routing, send queues, the replay log and the
features meet (``core.Node``), and what a running node reports about itself (``report``).
"""

from __future__ import annotations

from router.node.core import (
    Node,
    EndpointStats,
    describe_topology,
    name_list,
)

__all__ = [
    "describe_topology",
    "EndpointStats",
    "name_list",
    "Node",
]
