"""What each zone may hold and what each endpoint is sent: Icinga's rules, pure.

Icinga (``ApiListener::SendConfigUpdate``) sends a connecting endpoint every zone that is
the endpoint's own zone or below it, and every global zone, in one ``config::Update``; the
receiver treats the message as the complete set (zones left out are removed when it
activates the update), so a message always carries all of an endpoint's zones, never only
the one that changed. A node may hold its own zone, the zones below it and the global
zones (what its parent sends it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from router.features.configsync.files import ZoneConfig, update_params
from router.protocol import jsonrpc, netstring
from router.routing import Topology

METHOD = "config::Update"


def zone_problem(topology: Topology, zone: str) -> str | None:
    """Why this node may not hold ``zone``, or None when it may."""
    spec = topology.zone(zone)
    if spec is None:
        return f"zone {zone!r} is not configured here"
    if spec.global_ or zone == topology.local_zone \
            or topology.is_ancestor(topology.local_zone, zone):
        return None
    return f"zone {zone!r} is neither ours, below ours, nor global"


def receiving_zone(topology: Topology, endpoint: str) -> str | None:
    """The zone of ``endpoint`` when we send it configuration: a zone below ours."""
    zone = topology.zone_of(endpoint)
    if zone is not None and topology.is_ancestor(topology.local_zone, zone):
        return zone
    return None


def zones_for(topology: Topology, client_zone: str, held: Iterable[str]) -> list[str]:
    """The held zones an endpoint of ``client_zone`` gets: its own, below it, global."""
    out = []
    for name in held:
        spec = topology.zone(name)
        if spec is None:
            continue
        if spec.global_ or name == client_zone or topology.is_ancestor(client_zone, name):
            out.append(name)
    return sorted(out)


def encode_update(zones: Mapping[str, ZoneConfig], names: Iterable[str]) -> bytes:
    """The framed ``config::Update`` for these zones (no ``ts``: Icinga sends it direct)."""
    params = update_params([zones[name] for name in names])
    return netstring.encode(jsonrpc.notification(METHOD, params))


__all__ = ["METHOD", "encode_update", "receiving_zone", "zone_problem", "zones_for"]
