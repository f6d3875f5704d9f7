"""Config sync: the zones this node holds, received from its parent or read from a
zones directory, and what it sends to its children.

Two roles, as in Icinga (docs/config-sync.md):

- **satellite** (``accept_config``): a ``config::Update`` from an endpoint of the parent
  zone replaces the zones we hold (all or nothing, checked by ``files.parse_update``,
  written by ``store.ZoneStore``); anything else is refused with a reason the node logs
  and counts. A zone whose configuration files are unchanged keeps its stored copy (and
  its ``.timestamp``), so children do not reload for nothing.
- **master** (``zones_dir``): ``DIR/<zone>/**`` are our authoritative zones, stored in the
  same layout; ``reload()`` reads the directory again.

Either way each connected endpoint of a zone below ours gets, on connect and whenever
something it holds changed, one ``config::Update`` with its own zone, the zones below it
and the global zones (``relay``), encoded once per zone. ``object Host`` definitions in a
zone's files place those hosts in that zone (``on_hosts``, the routing's object table).

Unlike an Icinga satellite it does not restart to apply a zone, so children stay
connected and only those whose zones changed are sent anything (users.md P2), and an
update is checked whole and published atomically (P17: no half-written or older set).

Typed against :class:`ConfigSyncHost`; never imports ``router.node``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from router.config import RouterConfig
from router.config.objects import host_objects
from router.features.configsync import relay
from router.features.configsync.files import (UpdateRefused, ZoneConfig, authoritative_zone,
                                              parse_update, update_params)
from router.features.configsync.store import ZoneStore, read_tree
from router.routing import Relation, Topology

log = logging.getLogger("router.configsync")

#: Prefix of a zones directory's files in Icinga's layout (``include_zones "_etc"``).
ETC_TAG = "/_etc"


class ConfigSyncHost(Protocol):
    """What config sync needs from the node (``router.node.Node``)."""

    @property
    def topology(self) -> Topology: ...

    @property
    def connections(self) -> Mapping[str, object]:
        """Every authenticated session by endpoint, replaying ones included."""

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A ``config::Update`` not taken: ``reason`` is the metric label, ``text`` the log."""

    reason: str
    text: str


class ConfigSync:
    """The zones this node holds and serves."""

    def __init__(self, host: ConfigSyncHost, *, api_dir: str, accept_config: bool,
                 zones_dir: str | None, max_update_bytes: int,
                 on_hosts: Callable[[Mapping[str, str]], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.store = ZoneStore(api_dir)
        self.accept_config = accept_config
        self.zones_dir = zones_dir
        self.max_update_bytes = max_update_bytes
        self.on_hosts = on_hosts
        self.clock = clock
        #: zone name -> its files, as stored and served.
        self.zones: dict[str, ZoneConfig] = {}
        #: Zones read from ``zones_dir``: a parent's update never replaces them.
        self.authoritative: frozenset[str] = frozenset()
        #: (direction, result) -> count: router_config_updates_total.
        self.updates: dict[tuple[str, str], int] = {}
        #: The last config::Update from a sender we take it from, as it came: a reload
        #: that adds a zone it held takes it again (``on_reload``).
        self._last_update: tuple[str, Mapping[str, Any]] | None = None
        self._zone_names = frozenset(host.topology.zone_names)

    @property
    def topology(self) -> Topology:
        """The node's current zone tree (a reload may replace it)."""
        return self.host.topology

    def count(self, direction: str, result: str, n: int = 1) -> None:
        key = (direction, result)
        self.updates[key] = self.updates.get(key, 0) + n

    # ------------------------------------------------------------------ start, reload

    def start(self) -> None:
        """Load the stored zones and (master) the zones directory; publish their hosts."""
        stored = self.store.load()
        for name in list(stored):
            problem = relay.zone_problem(self.topology, name)
            if problem is not None:
                log.warning("config sync: not serving stored zone %s: %s", name, problem)
                del stored[name]
        self.zones = stored
        if self.zones_dir is not None:
            self.reload()
        else:
            self._publish_hosts()
        if self.zones:
            log.info("config sync: holding %d zones: %s", len(self.zones),
                     ", ".join(sorted(self.zones)))

    def reload(self) -> list[str]:
        """Read ``zones_dir`` again; store and send the zones that changed (their names).

        Only the endpoints whose set of zones contains a changed zone are sent an update;
        a zone whose files are unchanged keeps its ``.timestamp``.
        """
        if self.zones_dir is None and not self.authoritative:
            return []
        try:
            fresh = read_zones_dir(self.topology, self.zones_dir, self.clock(), self.zones)
        except (OSError, ValueError, TypeError) as exc:
            # One bad entry must not stop the node (it did at start) or every reload.
            log.error("config sync: cannot read the zones directory (keeping the zones we "
                      "hold): %s", exc)
            self.count("read", "failed")
            return []
        # Without accept_config every zone we hold comes from the directory: a zone
        # whose directory went away (even while we were stopped) goes too.
        new = {n: z for n, z in self.zones.items() if self.accept_config
               and n not in self.authoritative and n not in fresh}
        new.update(fresh)
        try:
            changed = self._apply(new, "zones directory")
        except OSError as exc:
            log.error("config sync: cannot store the zones read from %s (keeping the "
                      "previous set): %s", self.zones_dir, exc)
            self.count("read", "write_failed")
            return []
        self.authoritative = frozenset(fresh)
        self.count("read", "changed" if changed else "unchanged")
        return changed

    def on_reload(self, config: RouterConfig, diff: object = None) -> None:
        """The node's reload hook (``ReloadHooks.register("configsync", ...)``): take the
        new ``accept_config``, ``zones_dir`` and size limit, read the zones directory
        again, and give the node's new object table the hosts of the zones we hold."""
        self.accept_config = config.node.accept_config
        self.zones_dir = config.node.zones_dir
        self.max_update_bytes = config.limits.max_config_update_bytes
        changed = self.reload()
        gained = set(self.topology.zone_names) - self._zone_names
        self._zone_names = frozenset(self.topology.zone_names)
        last = self._last_update
        retaken = False
        if gained and last is not None and last[0] in self.host.connections:
            # The parent sends config::Update only when it connects (Icinga): a zone it
            # sent before we knew it was dropped, and a reload that adds it would get it
            # only at the next reconnect (an Icinga satellite restarts). Its last update
            # is taken again (review).
            log.info("config sync: zones %s added by the reload: taking %s's last update "
                     "again", ", ".join(sorted(gained)), last[0])
            refusal = self.receive(*last)
            if refusal is not None:
                log.warning("config sync: %s's last update, taken again: %s", last[0],
                            refusal.text)
            retaken = True
        if not changed or retaken:
            self._publish_hosts()           # the reload's new object table needs them

    # ------------------------------------------------------------------ receiving

    def _without_unknown_zones(self, endpoint: str, params: Mapping[str, Any]
                               ) -> Mapping[str, Any]:
        """``params`` without the zones not configured here, each logged and counted.

        An Icinga master sends every global zone it has to every child, and an Icinga
        receiver skips one it does not know and takes the others. Refusing the whole
        update for one (a satellite without the master's "director-global") left the
        satellite and its children without configuration for good (review). A zone
        configured here but not ours still refuses the update (``parse_update``)."""
        unknown = sorted(name for part in (params.get("update"), params.get("update_v2"))
                         if isinstance(part, dict) for name in part
                         if self.topology.zone(name) is None)
        if not unknown:
            return params
        for name in dict.fromkeys(unknown):
            log.info("config sync: ignoring zone %s from %s: not configured here (as "
                     "Icinga does)", name, endpoint)
            self.count("received", "ignored_unknown_zone")
        out = dict(params)
        for key in ("update", "update_v2", "checksums"):
            part = params.get(key)
            if isinstance(part, dict):
                out[key] = {n: v for n, v in part.items() if n not in unknown}
        return out

    def receive(self, endpoint: str, params: Mapping[str, Any]) -> Refusal | None:
        """A ``config::Update`` from ``endpoint``: stored and relayed, or a refusal."""
        refusal = self._check_sender(endpoint)
        if refusal is None:
            self._last_update = (endpoint, params)
            params = self._without_unknown_zones(endpoint, params)
            try:
                received = parse_update(
                    params, lambda z: relay.zone_problem(self.topology, z),
                    self.max_update_bytes, self.clock())
            except UpdateRefused as exc:
                refusal = Refusal(exc.reason, exc.text)
        if refusal is not None:
            self.count("received", refusal.reason)
            return refusal
        new: dict[str, ZoneConfig] = {n: self.zones[n] for n in self.authoritative
                                      if n in self.zones}
        for name, zone in received.items():
            old = self.zones.get(name)
            if name in self.authoritative:
                log.info("config sync: ignoring zone %s from %s: we hold it from %s", name,
                         endpoint, self.zones_dir)
            elif old is not None and (zone.same_content(old) or (
                    old.timestamp or 0.0) >= (zone.timestamp or 0.0)):
                if not zone.same_content(old):
                    log.info("config sync: keeping our copy of zone %s: it is more recent "
                             "than the one %s sent", name, endpoint)
                new[name] = old
            else:
                new[name] = zone
        try:
            changed = self._apply(new, f"endpoint {endpoint}")
        except OSError as exc:
            self.count("received", "write_failed")
            return Refusal("write_failed", f"cannot store the zones in {self.store.api_dir} "
                           f"(the previous set is kept): {exc}")
        self.count("received", "stored" if changed else "unchanged")
        if not changed:
            log.info("config sync: zones from %s are equal to what we hold (%s)", endpoint,
                     ", ".join(sorted(received)) or "none")
        return None

    def _check_sender(self, endpoint: str) -> Refusal | None:
        if not self.accept_config:
            return Refusal("not_accepted", "this node does not accept configuration "
                           "(node.accept_config is off)")
        if self.topology.relation(endpoint) is not Relation.PARENT:
            return Refusal("not_parent", f"only endpoints of our parent zone "
                           f"{self.topology.parent_zone!r} may send configuration")
        return None

    # ------------------------------------------------------------------ applying

    def _apply(self, new: dict[str, ZoneConfig], source: str) -> list[str]:
        """Store ``new`` when it differs; publish hosts and send updates; changed names."""
        old = self.zones
        changed = sorted(n for n in set(old) | set(new)
                         if old.get(n) is None or new.get(n) is None
                         or old[n].files != new[n].files)
        if not changed:
            return []
        self.store.replace(new, self.zones)  # raises OSError: nothing below happens then
        self.zones = new
        log.info("config sync: zones changed (from %s): %s", source, ", ".join(
            f"{n} ({'removed' if n not in new else new[n].digest[:12]})" for n in changed))
        self._publish_hosts()
        self._send_changed(old, changed)
        return changed

    def _publish_hosts(self) -> None:
        if self.on_hosts is None:
            return
        hosts: dict[str, str] = {}
        for name, zone in sorted(self.zones.items()):
            spec = self.topology.zone(name)
            if spec is None or spec.global_:
                continue  # a host in a global zone belongs to no one zone
            for text in zone.hosts_files():
                for host in host_objects(text):
                    hosts.setdefault(host, name)
        self.on_hosts(hosts)

    # ------------------------------------------------------------------ sending

    def endpoint_connected(self, endpoint: str) -> None:
        """Send a child endpoint that just connected its zones (Icinga: on every connect)."""
        zone = relay.receiving_zone(self.topology, endpoint)
        if zone is None:
            return
        names = relay.zones_for(self.topology, zone, self.zones)
        if self.host.send_to(endpoint, relay.encode_update(self.zones, names), relay.METHOD):
            self.count("sent", "connect")
            log.info("config sync: sent %s zones %s", endpoint, ", ".join(names) or "(none)")

    def _send_changed(self, old: Mapping[str, ZoneConfig], changed: list[str]) -> None:
        """Send every connected child endpoint whose zones changed; one encoding per zone."""
        by_zone: dict[str, list[str]] = {}
        # Every session, not only the live ones: a child still replaying its log when a
        # zone changed was sent nothing, and nothing sent it the change later (it got
        # the zones of before at connect; review). Its update is queued behind the replay.
        for endpoint in sorted(self.host.connections):
            zone = relay.receiving_zone(self.topology, endpoint)
            if zone is not None:
                by_zone.setdefault(zone, []).append(endpoint)
        touched = set(changed)
        for zone, endpoints in sorted(by_zone.items()):
            names = relay.zones_for(self.topology, zone, self.zones)
            before = relay.zones_for(self.topology, zone, old)
            if not touched.intersection(names) and not touched.intersection(before):
                continue
            frame = relay.encode_update(self.zones, names)
            for endpoint in endpoints:
                if self.host.send_to(endpoint, frame, relay.METHOD):
                    self.count("sent", "change")
            log.info("config sync: sent zone %s (%s) zones %s", zone, ", ".join(endpoints),
                     ", ".join(names) or "(none)")

    # ------------------------------------------------------------------ reporting

    def preview(self, zone: str) -> dict[str, Any]:
        """The ``config::Update`` params an endpoint of ``zone`` would be sent."""
        names = relay.zones_for(self.topology, zone, self.zones)
        return update_params([self.zones[n] for n in names])

    def status(self) -> list[dict[str, Any]]:
        """Each held zone: checksum, file count, size, age (``/v1/status`` config_zones)."""
        now = self.clock()
        out = []
        for name, zone in sorted(self.zones.items()):
            ts = zone.timestamp
            out.append({"zone": name, "checksum": zone.digest, "files": len(zone.files),
                        "bytes": zone.size, "timestamp": ts,
                        "age_seconds": round(now - ts, 3) if ts is not None else None,
                        "authoritative": name in self.authoritative})
        return out


def read_zones_dir(topology: Topology, zones_dir: str | None, now: float,
                   previous: Mapping[str, ZoneConfig]) -> dict[str, ZoneConfig]:
    """The zones of a zones directory (``DIR/<zone>/**``), with Icinga's metadata; a
    zone unchanged from ``previous`` keeps its timestamp. Raises ``OSError``."""
    fresh: dict[str, ZoneConfig] = {}
    if zones_dir is None:
        return fresh
    for name in sorted(os.listdir(zones_dir)):
        path = os.path.join(zones_dir, name)
        if not os.path.isdir(path):
            continue
        problem = relay.zone_problem(topology, name)
        if problem is not None:
            log.warning("config sync: ignoring %s: %s", path, problem)
            continue
        files = read_tree(path, ETC_TAG, follow_links=True)
        if files:  # Icinga skips a zone directory without files
            fresh[name] = authoritative_zone(name, files, now, previous.get(name))
    return fresh


def held_zones(topology: Topology, api_dir: str, zones_dir: str | None,
               accept_config: bool, now: float) -> dict[str, ZoneConfig]:
    """What a node with this configuration holds, read without writing anything
    (``router config zones``)."""
    stored = {n: z for n, z in ZoneStore(api_dir).peek().items()
              if relay.zone_problem(topology, n) is None}
    fresh = read_zones_dir(topology, zones_dir, now, stored)
    zones = {n: z for n, z in stored.items() if accept_config and n not in fresh}
    zones.update(fresh)
    return zones


__all__ = ["ConfigSync", "ConfigSyncHost", "ETC_TAG", "Refusal", "held_zones",
           "read_zones_dir"]
