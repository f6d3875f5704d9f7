"""The zone tree: zones, endpoints, and where this node sits in it.

Pure data, built once from the configuration and validated on construction
(:class:`router.errors.ConfigError` names the offending zone or endpoint). The
rules follow Icinga 2.13 (``lib/remote/zone.cpp``, ``lib/remote/endpoint.cpp``):

* every endpoint named by a zone exists, and an endpoint belongs to at most one zone
  (endpoints that belong to no zone are allowed: they exist but have no place in the tree);
* a parent zone exists, is not global, and the parent chain has no cycle;
* a global zone has neither a parent nor endpoints;
* the local endpoint is in exactly one zone (the local zone).

``can_access`` is Icinga's ``Zone::CanAccessObject``: the object's zone is global, or equal
to the asking zone, or the asking zone is one of its ancestors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from router.errors import ConfigError

__all__ = ["ZoneSpec", "EndpointSpec", "Relation", "Topology"]


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    name: str
    endpoints: tuple[str, ...] = ()
    parent: str | None = None
    global_: bool = False


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    name: str
    addresses: tuple[tuple[str, int], ...] = ()


def _is_name(name: object) -> bool:
    """Whether ``name`` is a non-empty string.

    The specs are annotated ``str`` but may be built from unchecked input (``object``
    here, so the type checker keeps the check instead of calling it redundant).
    """
    return isinstance(name, str) and bool(name)


class Relation(Enum):
    """Where an endpoint sits as seen from the local endpoint."""

    SELF = "self"
    PEER = "peer"        # same zone (HA partner)
    PARENT = "parent"    # endpoint of our parent zone
    CHILD = "child"      # endpoint of a direct child zone
    OTHER = "other"      # known endpoint, not adjacent (or in no zone at all)


class Topology:
    """Validated zone tree seen from ``local_endpoint``.

    Everything is computed in ``__init__``; the query methods are dictionary lookups.
    """

    __slots__ = (
        "local_endpoint", "local_zone", "local_zone_ha", "parent_zone", "child_zones",
        "global_zones", "zone_names", "endpoint_names", "_zones", "_endpoints", "_zone_of",
        "_ancestors", "_children", "_relations", "_adjacent_zones", "_zone_relations",
    )

    def __init__(self, zones: Iterable[ZoneSpec], endpoints: Iterable[EndpointSpec],
                 local_endpoint: str) -> None:
        zmap: dict[str, ZoneSpec] = {}
        for z in zones:
            if not _is_name(z.name):
                raise ConfigError(f"zone with an empty or invalid name: {z.name!r}")
            if z.name in zmap:
                raise ConfigError(f"zone '{z.name}' is defined twice", key=z.name)
            # normalise list-valued endpoints so the stored spec is hashable and immutable
            if not isinstance(z.endpoints, tuple):
                z = ZoneSpec(z.name, tuple(z.endpoints), z.parent, z.global_)
            zmap[z.name] = z
        emap: dict[str, EndpointSpec] = {}
        for e in endpoints:
            if not _is_name(e.name):
                raise ConfigError(f"endpoint with an empty or invalid name: {e.name!r}")
            if e.name in emap:
                raise ConfigError(f"endpoint '{e.name}' is defined twice", key=e.name)
            if not isinstance(e.addresses, tuple):
                e = EndpointSpec(e.name, tuple(tuple(a) for a in e.addresses))
            emap[e.name] = e

        zone_of: dict[str, str] = {}
        for z in zmap.values():
            if z.global_:
                if z.parent is not None:
                    raise ConfigError(
                        f"global zone '{z.name}' must not have a parent (has '{z.parent}')",
                        key=z.name)
                if z.endpoints:
                    raise ConfigError(f"global zone '{z.name}' must not have endpoints",
                                      key=z.name)
            for ep in z.endpoints:
                if ep not in emap:
                    raise ConfigError(f"zone '{z.name}' names unknown endpoint '{ep}'",
                                      key=z.name)
                if ep in zone_of:
                    raise ConfigError(
                        f"endpoint '{ep}' is in more than one zone "
                        f"('{zone_of[ep]}' and '{z.name}')", key=ep)
                zone_of[ep] = z.name
            if z.parent is not None:
                parent = zmap.get(z.parent)
                if parent is None:
                    raise ConfigError(f"zone '{z.name}' has unknown parent zone '{z.parent}'",
                                      key=z.name)
                if parent.global_:
                    raise ConfigError(
                        f"zone '{z.name}' can not have the global zone '{z.parent}' as parent",
                        key=z.name)

        ancestors: dict[str, tuple[str, ...]] = {}
        for z in zmap.values():
            chain: list[str] = []
            seen = {z.name}
            p = z.parent
            while p is not None:
                if p in seen:
                    raise ConfigError(f"zone '{z.name}' is part of a parent cycle "
                                      f"(through '{p}')", key=z.name)
                seen.add(p)
                chain.append(p)
                p = zmap[p].parent
            ancestors[z.name] = tuple(chain)

        if local_endpoint not in emap:
            raise ConfigError(f"local endpoint '{local_endpoint}' is not a known endpoint",
                              key=local_endpoint)
        if local_endpoint not in zone_of:
            raise ConfigError(f"local endpoint '{local_endpoint}' is in no zone",
                              key=local_endpoint)

        children: dict[str, list[str]] = {name: [] for name in zmap}
        for z in zmap.values():
            if z.parent is not None:
                children[z.parent].append(z.name)

        self._zones = zmap
        self._endpoints = emap
        self._zone_of = zone_of
        self._ancestors = ancestors
        self._children = {k: tuple(v) for k, v in children.items()}
        self.zone_names: tuple[str, ...] = tuple(zmap)            # configured order
        self.endpoint_names: tuple[str, ...] = tuple(emap)    # configured order
        self.local_endpoint: str = local_endpoint
        self.local_zone: str = zone_of[local_endpoint]
        self.parent_zone: str | None = zmap[self.local_zone].parent
        #: Our zone has other endpoints (HA): a peer's message may reach us twice, from
        #: the peer and relayed by our partner (router.node.receipts).
        self.local_zone_ha: bool = len(zmap[self.local_zone].endpoints) > 1
        self.child_zones: tuple[str, ...] = self._children[self.local_zone]
        self.global_zones: tuple[str, ...] = tuple(n for n, z in zmap.items() if z.global_)

        adjacent = [self.local_zone]
        if self.parent_zone is not None:
            adjacent.append(self.parent_zone)
        adjacent.extend(self.child_zones)
        self._adjacent_zones: tuple[str, ...] = tuple(adjacent)

        rel: dict[str, Relation] = {name: Relation.OTHER for name in emap}
        for zname, r in ((self.local_zone, Relation.PEER), (self.parent_zone, Relation.PARENT)):
            if zname is not None:
                for ep in zmap[zname].endpoints:
                    rel[ep] = r
        for c in self.child_zones:
            for ep in zmap[c].endpoints:
                rel[ep] = Relation.CHILD
        rel[local_endpoint] = Relation.SELF
        self._relations = rel

        zrel = {name: ("global" if z.global_ else "other") for name, z in zmap.items()}
        for c in self.child_zones:
            zrel[c] = "child"
        if self.parent_zone is not None:
            zrel[self.parent_zone] = "parent"
        zrel[self.local_zone] = "local"
        self._zone_relations = zrel

    # -- lookups -------------------------------------------------------------------------

    def zone(self, name: str) -> ZoneSpec | None:
        return self._zones.get(name)

    def endpoint(self, name: str) -> EndpointSpec | None:
        return self._endpoints.get(name)

    def zone_of(self, endpoint: str) -> str | None:
        return self._zone_of.get(endpoint)

    def children(self, zone: str) -> tuple[str, ...]:
        """Direct child zones of ``zone`` in configured order (() for unknown zones)."""
        return self._children.get(zone, ())

    def ancestors(self, zone: str) -> tuple[str, ...]:
        """Parent, grandparent, ... of ``zone`` (() for a root, global or unknown zone)."""
        return self._ancestors.get(zone, ())

    def is_ancestor(self, ancestor: str, zone: str) -> bool:
        """True when ``ancestor`` is a strict ancestor of ``zone``."""
        return ancestor in self._ancestors.get(zone, ())

    def can_access(self, from_zone: str, obj_zone: str) -> bool:
        """Icinga ``CanAccessObject``: may ``from_zone`` speak about objects in ``obj_zone``."""
        z = self._zones.get(obj_zone)
        if z is None:
            return False
        if z.global_:
            return True
        return from_zone == obj_zone or from_zone in self._ancestors[obj_zone]

    def relation(self, endpoint: str) -> Relation | None:
        return self._relations.get(endpoint)

    def zone_relation(self, zone: str) -> str:
        """How ``zone`` stands to us: "local", "parent", "child", "global" or "other".

        A dictionary lookup: the status document asks it for every zone, and a satellite
        with 5 000 agent zones must not pay a scan of its child zones for each.
        """
        return self._zone_relations.get(zone, "other")

    def dial_targets(self) -> tuple[EndpointSpec, ...]:
        """Endpoints of the local, parent and direct child zones that have an address (not us)."""
        out = []
        for ep in self.adjacent_endpoints():
            spec = self._endpoints[ep]
            if spec.addresses:
                out.append(spec)
        return tuple(out)

    def adjacent_endpoints(self) -> tuple[str, ...]:
        """Every endpoint of the local, parent and direct child zones except ourselves.

        Order: local zone, parent zone, then child zones, each in configured order.
        """
        out = []
        for zname in self._adjacent_zones:
            for ep in self._zones[zname].endpoints:
                if ep != self.local_endpoint:
                    out.append(ep)
        return tuple(out)

    def peers_and_parents(self) -> tuple[str, ...]:
        """The endpoints related to us as PEER or PARENT: our zone's others, then the
        parent zone's. A few names, where scanning every connected endpoint for its
        relation would be 10 000 look-ups a second on a satellite of agents."""
        out = [ep for ep in self._zones[self.local_zone].endpoints if ep != self.local_endpoint]
        if self.parent_zone is not None:
            out.extend(self._zones[self.parent_zone].endpoints)
        return tuple(out)

    def __repr__(self) -> str:
        return (f"Topology(local_endpoint={self.local_endpoint!r}, local_zone={self.local_zone!r}, "
                f"zones={len(self._zones)}, endpoints={len(self._endpoints)})")
