"""What changed between two configurations: the pure half of a reload.

A reload (``router reload``, SIGHUP) must keep every session whose endpoint and zone are
unchanged (users.md P1, P2: Icinga drops every session on each reload). To know which
sessions may stay, which must go, and what else to swap, the running configuration is
compared with the new one here, without touching anything: :func:`diff_configs` returns
a :class:`ConfigDiff` that the node (``router.node.reload``) and the service
(``router.app``) apply.

Keys that cannot change in a running process (the node's name and data directory, the
listeners, the TLS library, the handshake thread pool, the result view) are reported in
:attr:`ConfigDiff.restart_required`; the rest of the reload still applies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from router.config.model import RouterConfig
from router.routing import EndpointSpec, ZoneSpec

__all__ = ["ConfigDiff", "diff_configs"]


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """The changes from one configuration to the next (names sorted)."""

    endpoints_added: tuple[str, ...] = ()
    endpoints_removed: tuple[str, ...] = ()
    #: Endpoints that are in another zone now: their sessions must be re-established.
    endpoints_moved: tuple[str, ...] = ()
    #: Endpoints whose addresses changed (only dialling is affected).
    endpoints_readdressed: tuple[str, ...] = ()
    zones_added: tuple[str, ...] = ()
    zones_removed: tuple[str, ...] = ()
    #: Zones whose parent or global flag changed (their place in the tree).
    zones_reparented: tuple[str, ...] = ()
    #: Zones whose endpoint list changed (covered by the endpoint lists too).
    zones_membership: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    timeouts: tuple[str, ...] = ()
    #: TLS file paths changed, or (given fingerprints) their contents did.
    tls: bool = False
    objects: bool = False
    log_durations: tuple[str, ...] = ()
    log_level: bool = False
    checks: bool = False
    #: ``[[writers]]`` by name: new, gone, options changed (applied without a restart).
    writers_added: tuple[str, ...] = ()
    writers_removed: tuple[str, ...] = ()
    writers_changed: tuple[str, ...] = ()
    #: Other top-level sections that changed (``pki``, ...): the reload hooks of the
    #: components that own them apply them.
    other: tuple[str, ...] = ()
    #: Configuration keys that changed but only take effect after a restart.
    restart_required: tuple[str, ...] = ()

    @property
    def topology(self) -> bool:
        """Whether the zone tree or the endpoint set changed (routing must be rebuilt)."""
        return bool(self.endpoints_added or self.endpoints_removed or self.endpoints_moved
                    or self.endpoints_readdressed or self.zones_added or self.zones_removed
                    or self.zones_reparented or self.zones_membership)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def summary(self) -> dict[str, Any]:
        """Only what changed, JSON-ready (the ``changes`` of the reload record)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def describe(self) -> str:
        """One log line: ``endpoints_added=[a, b] limits=[max_connections]`` or ``none``."""
        parts = []
        for name, value in self.summary().items():
            parts.append(f"{name}=[{', '.join(value)}]" if isinstance(value, list) else name)
        return " ".join(parts) or "none"


#: RouterConfig fields :func:`diff_configs` compares one by one.
_COMPARED = frozenset({
    "node", "listen", "status_listen", "tls", "zones", "endpoints", "limits", "timeouts",
    "objects", "results", "log_level", "path", "endpoint_log_duration", "checks",
    "writers"})


def _changed_fields(old: Any, new: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name))


def _zone_of(zones: tuple[ZoneSpec, ...]) -> dict[str, str]:
    return {endpoint: zone.name for zone in zones for endpoint in zone.endpoints}


def diff_configs(old: RouterConfig, new: RouterConfig, *,
                 old_tls_fingerprint: str | None = None,
                 new_tls_fingerprint: str | None = None) -> ConfigDiff:
    """Compare two validated configurations.

    The fingerprints (for instance a hash of the CA, certificate and key files) let the
    caller report a TLS change when the paths stayed the same but the files were
    replaced; the comparison itself reads no file.
    """
    old_eps: dict[str, EndpointSpec] = {e.name: e for e in old.endpoints}
    new_eps: dict[str, EndpointSpec] = {e.name: e for e in new.endpoints}
    old_zones: dict[str, ZoneSpec] = {z.name: z for z in old.zones}
    new_zones: dict[str, ZoneSpec] = {z.name: z for z in new.zones}
    old_zone_of, new_zone_of = _zone_of(old.zones), _zone_of(new.zones)
    kept_eps = old_eps.keys() & new_eps.keys()
    kept_zones = old_zones.keys() & new_zones.keys()

    restart = []
    for key, before, after in (
            ("node.name", old.node.name, new.node.name),
            ("node.data_dir", old.node.data_dir, new.node.data_dir),
            ("node.icinga_version", old.node.icinga_version, new.node.icinga_version),
            ("node.accept_commands", old.node.accept_commands, new.node.accept_commands),
            ("node.command_catalog", old.node.command_catalog, new.node.command_catalog),
            ("node.accept_config", old.node.accept_config, new.node.accept_config),
            ("node.zones_dir", old.node.zones_dir, new.node.zones_dir),
            ("node.log_format", old.node.log_format, new.node.log_format),
            ("listen", old.listen, new.listen),
            ("status_listen", old.status_listen, new.status_listen),
            ("tls.library", old.tls.library, new.tls.library),
            ("limits.handshake_threads", old.limits.handshake_threads,
             new.limits.handshake_threads),
            ("results", old.results, new.results)):
        if before != after:
            restart.append(key)
    if old.checks != new.checks:
        restart.append("checks")

    tls_paths = ((old.tls.ca, old.tls.cert, old.tls.key, old.tls.crl_file)
                 != (new.tls.ca, new.tls.cert, new.tls.key, new.tls.crl_file))
    durations = sorted(name for name in old.endpoint_log_duration.keys()
                       | new.endpoint_log_duration.keys()
                       if old.endpoint_log_duration.get(name)
                       != new.endpoint_log_duration.get(name))
    old_writers = {w.name: w for w in old.writers}
    new_writers = {w.name: w for w in new.writers}
    return ConfigDiff(
        writers_added=tuple(sorted(new_writers.keys() - old_writers.keys())),
        writers_removed=tuple(sorted(old_writers.keys() - new_writers.keys())),
        writers_changed=tuple(sorted(n for n in old_writers.keys() & new_writers.keys()
                                     if old_writers[n] != new_writers[n])),
        endpoints_added=tuple(sorted(new_eps.keys() - old_eps.keys())),
        endpoints_removed=tuple(sorted(old_eps.keys() - new_eps.keys())),
        endpoints_moved=tuple(sorted(e for e in kept_eps
                                     if old_zone_of.get(e) != new_zone_of.get(e))),
        endpoints_readdressed=tuple(sorted(e for e in kept_eps
                                           if old_eps[e].addresses != new_eps[e].addresses)),
        zones_added=tuple(sorted(new_zones.keys() - old_zones.keys())),
        zones_removed=tuple(sorted(old_zones.keys() - new_zones.keys())),
        zones_reparented=tuple(sorted(
            z for z in kept_zones
            if (old_zones[z].parent, old_zones[z].global_)
            != (new_zones[z].parent, new_zones[z].global_))),
        zones_membership=tuple(sorted(
            z for z in kept_zones
            if set(old_zones[z].endpoints) != set(new_zones[z].endpoints))),
        limits=_changed_fields(old.limits, new.limits),
        timeouts=_changed_fields(old.timeouts, new.timeouts),
        tls=tls_paths or old_tls_fingerprint != new_tls_fingerprint,
        objects=old.objects != new.objects,
        log_durations=tuple(durations),
        log_level=old.log_level != new.log_level,
        checks=old.checks != new.checks,
        other=tuple(f.name for f in fields(old) if f.name not in _COMPARED
                    and getattr(old, f.name) != getattr(new, f.name)),
        restart_required=tuple(restart),
    )
