"""Which zone owns each host: configuration first, learning only when asked for.

Ownership decides who may report a host (users.md P16: "verify sender zone for every
message type"). A child zone may speak about a host when

* the configuration assigns the host to that zone or to one below it: ``[objects.hosts]``,
  the hosts of our own ``[[checks]]``, and the hosts found in the zones' synced config
  files (:meth:`ObjectZones.replace_config_hosts`, fed by config sync);
* the host is named like a zone, or like an endpoint, of that zone or of one below it
  (Icinga's convention: an agent's zone, endpoint and host share one name; a
  command-endpoint agent runs its checks on a host named like itself).

Anything else is unknown. With ``unknown = "reject"`` (the default) messages about unknown
hosts are refused ``unknown_object``. With ``unknown = "learn"`` (an explicit opt-in) the
first child zone that reports an unknown host owns it from then on; the node persists
what was learned (``router.node.learned``), so a restart does not hand the host to
whichever agent reconnects first, and a per-zone cap keeps one agent from filling the
node's memory with invented names.

Configuration always wins over learning: a host the configuration places somewhere is
never learned, and configuring a host that was learned takes it out of the learned set.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum

from router.errors import ConfigError
from router.routing.topology import Topology

__all__ = ["DEFAULT_MAX_LEARNED_PER_ZONE", "LearnResult", "ObjectZones", "UnknownObjects"]

#: Default of ``[objects] max_learned_per_zone``.
DEFAULT_MAX_LEARNED_PER_ZONE = 10_000


class UnknownObjects(Enum):
    """What to do with a host that no configuration places in a zone."""

    LEARN = "learn"
    REJECT = "reject"


class LearnResult(Enum):
    """Outcome of :meth:`ObjectZones.learn`."""

    LEARNED = "learned"
    KNOWN = "known"              # configured or learned already: left alone
    UNKNOWN_ZONE = "unknown_zone"
    ZONE_FULL = "zone_full"      # the zone has learned ``max_learned_per_zone`` hosts


class ObjectZones:
    """Host name -> zone name: configured hosts, config-sync hosts, learned hosts.

    ``_map`` is the merged view the router reads on its hot path (one dict lookup);
    the three sources are kept apart so that each can be replaced on its own.
    """

    __slots__ = ("topology", "unknown", "max_learned_per_zone", "learn_refused",
                 "changes", "_static", "_synced", "_runtime", "_runtime_zones", "_learned",
                 "_per_zone", "_map", "_zone_names", "_host_zone_names", "_ep_zone")

    def __init__(self, topology: Topology, hosts: Mapping[str, str] = {},
                 unknown: UnknownObjects = UnknownObjects.REJECT,
                 max_learned_per_zone: int = DEFAULT_MAX_LEARNED_PER_ZONE) -> None:
        self.topology = topology
        self.unknown = UnknownObjects(unknown)
        self.max_learned_per_zone = max_learned_per_zone
        #: zone -> learning attempts refused because the zone was full (a metric).
        self.learn_refused: dict[str, int] = {}
        #: Bumped on every change of the learned set (the persistence layer saves then).
        self.changes = 0
        zone_names = frozenset(topology.zone_names)
        for host, zone in hosts.items():
            if zone not in zone_names:
                raise ConfigError(f"host '{host}' is in unknown zone '{zone}'", key=host)
        self._zone_names = zone_names
        #: Zones a host may be named after: a global zone is in every node's tree, so
        #: a host named like it ("global-templates") would be everybody's and go
        #: everywhere (review: an agent sent results for it to every sibling agent).
        self._host_zone_names = zone_names - frozenset(topology.global_zones)
        self._static: dict[str, str] = dict(hosts)
        self._synced: dict[str, str] = {}
        #: Objects our parent created at runtime (router.node.runtime): (type, name) ->
        #: zone, and their hosts, placed like configured ones.
        self._runtime_zones: dict[tuple[str, str], str] = {}
        self._runtime: dict[str, str] = {}
        self._learned: dict[str, str] = {}
        self._per_zone: dict[str, int] = {}
        self._map: dict[str, str] = dict(hosts)
        self._ep_zone = {ep: topology.zone_of(ep) for ep in topology.endpoint_names}

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, host: str) -> str | None:
        """The zone owning ``host``: assigned, learned, or named like a zone (not a global
        one) or an endpoint."""
        z = self._map.get(host)
        if z is not None:
            return z
        if host in self._host_zone_names:
            return host
        return self._ep_zone.get(host)

    @property
    def learned(self) -> int:
        """Number of learned hosts (for metrics)."""
        return len(self._learned)

    def learned_hosts(self) -> dict[str, str]:
        """A copy of the learned host -> zone map."""
        return dict(self._learned)

    def learned_in(self, zone: str) -> int:
        return self._per_zone.get(zone, 0)

    def is_configured(self, host: str) -> bool:
        return host in self._static or host in self._synced or host in self._runtime

    # -- runtime objects -------------------------------------------------------------------

    def set_runtime(self, type_: str, name: str, zone: str) -> bool:
        """Our parent created (or changed) ``type_`` ``name`` in ``zone`` at runtime
        (``config::UpdateObject``): its deletion goes there, and a ``Host`` is placed in it
        as a configured one is (a learned one gives way). False for an unknown zone."""
        if zone not in self._zone_names:
            return False
        self._runtime_zones[(type_, name)] = zone
        if type_ == "Host" and zone in self._host_zone_names:
            self._runtime[name] = zone
            if name in self._learned:
                self.forget([name])
            self._rebuild_one(name)
        return True

    def drop_runtime(self, type_: str, name: str) -> None:
        """``config::DeleteObject`` of a runtime object (after it was routed)."""
        self._runtime_zones.pop((type_, name), None)
        if type_ == "Host" and self._runtime.pop(name, None) is not None:
            self._rebuild_one(name)

    def runtime_zone(self, type_: object, name: object) -> str | None:
        """The zone a runtime object was created in, or None (also for names that are
        not strings: the message's JSON may hold anything)."""
        if type(type_) is not str or type(name) is not str or not self._runtime_zones:
            return None
        return self._runtime_zones.get((type_, name))

    def __contains__(self, host: object) -> bool:
        return host in self._map

    def __len__(self) -> int:
        return len(self._map)

    # -- learning --------------------------------------------------------------------------

    def learn(self, host: str, zone: str) -> LearnResult:
        """Place ``host`` in ``zone``: the first zone wins, configuration always wins.

        A host that is configured or learned already is left alone (``KNOWN``), and so is
        an unknown zone; a zone that holds ``max_learned_per_zone`` learned hosts learns
        no more (``ZONE_FULL``, counted in :attr:`learn_refused`).
        """
        if host in self._map:
            return LearnResult.KNOWN
        if zone not in self._zone_names:
            return LearnResult.UNKNOWN_ZONE
        count = self._per_zone.get(zone, 0)
        if count >= self.max_learned_per_zone:
            self.learn_refused[zone] = self.learn_refused.get(zone, 0) + 1
            return LearnResult.ZONE_FULL
        self._learned[host] = zone
        self._map[host] = zone
        self._per_zone[zone] = count + 1
        self.changes += 1
        return LearnResult.LEARNED

    def load_learned(self, hosts: Mapping[str, str]) -> list[tuple[str, str, str]]:
        """Take learned hosts back (from the data directory, at start).

        Returns what was skipped as (host, zone, why): the zone is gone from the
        configuration, the host is configured now, or the zone is full.
        """
        skipped: list[tuple[str, str, str]] = []
        before = self.changes
        for host, zone in hosts.items():
            result = self.learn(host, zone)
            if result is LearnResult.KNOWN:
                skipped.append((host, zone, "configured" if self.is_configured(host)
                                else "duplicate"))
            elif result is LearnResult.UNKNOWN_ZONE:
                skipped.append((host, zone, "zone not configured"))
            elif result is LearnResult.ZONE_FULL:
                skipped.append((host, zone, "zone over max_learned_per_zone"))
        # Loading is not a change to save, unless something was dropped.
        self.changes = before + (1 if skipped else 0)
        return skipped

    def forget(self, hosts: Iterable[str]) -> list[str]:
        """Drop learned hosts (``router objects forget``); returns those that were learned."""
        dropped = []
        for host in hosts:
            zone = self._learned.pop(host, None)
            if zone is None:
                continue
            dropped.append(host)
            self._per_zone[zone] -= 1
            self._rebuild_one(host)
        if dropped:
            self.changes += 1
        return dropped

    # -- configuration ---------------------------------------------------------------------

    def replace_config_hosts(self, hosts: Mapping[str, str]) -> None:
        """Replace the hosts found in the zones' synced or served config files.

        ``hosts`` maps host -> zone and replaces the previous config-derived set as a
        whole. Hosts in unknown zones are ignored (the config files may name zones this
        node does not have). ``[objects.hosts]`` keeps precedence; a learned host that the
        configuration now places is no longer learned.
        """
        new = {h: z for h, z in hosts.items() if z in self._zone_names}
        old = self._synced
        self._synced = new
        for host in old.keys() - new.keys():
            self._rebuild_one(host)
        taken = [h for h in new if h in self._learned]
        if taken:
            self.forget(taken)
        for host in new:
            self._rebuild_one(host)

    def _rebuild_one(self, host: str) -> None:
        zone = self._static.get(host) or self._synced.get(host) or self._runtime.get(host) \
            or self._learned.get(host)
        if zone is None:
            self._map.pop(host, None)
        else:
            self._map[host] = zone
