"""What the features need from the node above them, as a ``typing.Protocol``.

``LocalChecks`` runs this node's own checks: it asks which endpoints are connected (HA
authority, ``command_endpoint`` reachability), sends ``event::ExecuteCommand`` directly to
a command endpoint and routes the results like any message of this node. ``CommandExecutor``
needs nothing of the node but its name (a string). The features are typed against this and
never import ``router.node``.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any, Protocol


class NodeServices(Protocol):
    """The node as the local checks see it (``router.node.Node``)."""

    @property
    def name(self) -> str:
        """This node's endpoint name (``check_source`` of its results)."""

    @property
    def connected_names(self) -> Set[str]:
        """Endpoints with a live session (the routing table's connected set)."""

    def originate(self, method: str, params: dict[str, Any],
                  came_from: str | None = None) -> bool:
        """Route a message this node produces; False when routing refused it. ``came_from``:
        the endpoint it came from, whose zone it never goes back to."""

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool:
        """Queue an encoded frame for one connected endpoint; False when it is not."""


__all__ = ["NodeServices"]
