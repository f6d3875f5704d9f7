"""Features: what a node does with the messages it routes.

``results`` keeps the latest check result per checkable (the master's view); ``scheduler`` and
``checks`` run this node's own checks; ``commands`` runs a parent's ``event::ExecuteCommand``.
What they need from the node is ``services.NodeServices``: they are typed against it and
never import ``router.node``.

Only the protocol is imported here: ``checks`` and ``commands`` bring in the checker
catalog and pool, which a node without checks or commands never loads (the service
imports them when it starts them), so they are imported from their modules.
"""

from __future__ import annotations

from router.features.services import NodeServices

__all__ = ["NodeServices"]
