"""Routing: the zone tree, the method table and the routing decision (pure, no I/O).

``topology`` holds the zones and endpoints and this node's place among them; ``rules`` the
table of cluster methods and :class:`Router`, which decides for each message where it may go;
``objects`` which zone owns each host (configuration first, learning only as an opt-in);
``fields`` the JSON type of every method's parameters, checked before routing.
"""

from __future__ import annotations

from router.routing.topology import (
    EndpointSpec,
    Relation,
    Topology,
    ZoneSpec,
)
from router.routing.objects import (
    DEFAULT_MAX_LEARNED_PER_ZONE,
    LearnResult,
    ObjectZones,
    UnknownObjects,
)
from router.routing.rules import (
    METHODS,
    REASONS,
    MethodSpec,
    ObjRef,
    Perm,
    RouteDecision,
    Router,
    Target,
)

__all__ = [
    "DEFAULT_MAX_LEARNED_PER_ZONE",
    "EndpointSpec",
    "LearnResult",
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
