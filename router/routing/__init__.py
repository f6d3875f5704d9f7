"""Routing: the zone tree, the method table and the routing decision (pure, no I/O).

``topology`` holds the zones and endpoints and this node's place among them; ``rules`` the
table of cluster methods and :class:`Router`, which decides for each message where it may go.
"""

from __future__ import annotations

from router.routing.topology import (
    EndpointSpec,
    Relation,
    Topology,
    ZoneSpec,
)
from router.routing.rules import (
    METHODS,
    REASONS,
    MethodSpec,
    ObjectZones,
    ObjRef,
    Perm,
    RouteDecision,
    Router,
    Target,
    UnknownObjects,
)

__all__ = [
    "EndpointSpec",
    "METHODS",
    "MethodSpec",
    "ObjectZones",
    "ObjRef",
    "Perm",
    "REASONS",
    "Relation",
    "RouteDecision",
    "Router",
    "Target",
    "Topology",
    "UnknownObjects",
    "ZoneSpec",
]
