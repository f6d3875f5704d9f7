"""The node: the one place where sessions, routing, send queues, the replay log and the
features meet (``core.Node``), and what a running node reports about itself (``report``).

``core`` holds the node's state and its per-message path; the node owns collaborators for
what happens less often: ``sessions`` (admitting and retiring peers), ``executions``
(command execution bookkeeping), ``housekeeping`` (its timers); ``replay`` is the replay
log's side of the node. ``stats`` has the per-endpoint counters, ``texts`` the rate-limited
log and the wording of refusals.
"""

from __future__ import annotations

from router.node.core import Node
from router.node.stats import EndpointStats
from router.node.texts import describe_topology, name_list

__all__ = [
    "describe_topology",
    "EndpointStats",
    "name_list",
    "Node",
]
