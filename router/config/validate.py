"""Semantic validation: the zone tree (checked the way Icinga does), checks, value ranges.

It works on the model, not on TOML, so it also checks configurations built in code or by
quickstart and zone trees imported from a zones.conf; a :class:`Where` gives each error its
file and line. :func:`check_topology_at` and :func:`validate_at` are the forms that take
one, for the loaders and the zones.conf import.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from router.config.model import (
    BUILTIN_CHECK_COMMANDS,
    LOG_LEVELS,
    RESULTS_MODES,
    UNKNOWN_MODES,
    Limits,
    RouterConfig,
    Timeouts,
)
from router.config.source import Where
from router.config.units import check_host, check_name, format_address, suggest, type_name
from router.config.writers import check_writers
from router.errors import TLSSetupError
from router.pki import check_crl_file
from router.routing import EndpointSpec, ZoneSpec

if TYPE_CHECKING:  # pragma: no cover
    from checkers.catalog import Catalog

__all__ = ["advisories", "check_topology", "check_topology_at", "validate", "validate_at"]

#: More endpoints than this in one zone is valid but warned about (as Icinga 2 does).
MAX_ADVISED_ZONE_ENDPOINTS = 2


#: The largest ``limits.agent_receive_buffer`` (``SO_RCVBUF`` takes a C int).
MAX_RECEIVE_BUFFER = 1 << 30

def advisories(cfg: RouterConfig) -> list[str]:
    """What is valid but unwise in ``cfg``, one sentence each: logged at start and on
    reload, printed by ``router config check``.

    A zone with more than two endpoints: Icinga 2 warns about those too ("strongly
    discouraged"), and our exactly-once delivery is proven only for zones of one or two
    endpoints (docs/reliability.md): with three, a message relayed inside the zone and
    replayed from the log of a third endpoint can reach a feature twice."""
    return [f"zone '{zone.name}' has {len(zone.endpoints)} endpoints "
            f"({', '.join(zone.endpoints)}): more than {MAX_ADVISED_ZONE_ENDPOINTS} is "
            "discouraged (Icinga 2 warns too), and exactly-once delivery is only "
            "guaranteed for zones of one or two endpoints (docs/reliability.md)"
            for zone in cfg.zones if len(zone.endpoints) > MAX_ADVISED_ZONE_ENDPOINTS]


def check_topology(zones: Iterable[ZoneSpec], endpoints: Iterable[EndpointSpec], *,
                   node_name: str | None = None, path: str | None = None,
                   lines: Mapping[str, int] | None = None) -> None:
    """Validate a zone tree the way Icinga does; raise :class:`ConfigError`.

    ``lines`` maps key paths (``zones[1].parent``, ``endpoints[0].name``...) to line numbers
    of ``path``, so the error points at the offending line. With ``node_name`` the node
    must be an endpoint of exactly one zone (error key ``node.name``).
    """
    check_topology_at(tuple(zones), tuple(endpoints), node_name, Where(path, lines))


def _unique_names(items: tuple[ZoneSpec | EndpointSpec, ...], kind: str,
                  section: str, where: Where) -> dict[str, int]:
    """Check each item's name and that none repeats; name -> index."""
    index: dict[str, int] = {}
    for i, item in enumerate(items):
        key = f"{section}[{i}].name"
        name: object = item.name        # objects built in code may hold anything
        problem = check_name(name, kind) if isinstance(name, str) else \
            f"{kind} name must be a string, got {type_name(name)}"
        if problem:
            raise where.error(problem, key)
        if item.name in index:
            first = where.line(f"{section}[{index[item.name]}]")
            at = f" (first at line {first})" if first else ""
            raise where.error(f"{kind} '{item.name}' is defined twice{at}", key)
        index[item.name] = i
    return index


def check_topology_at(zones: tuple[ZoneSpec, ...], endpoints: tuple[EndpointSpec, ...],
                      node_name: str | None, where: Where) -> None:
    """:func:`check_topology`, with ``where`` placing the errors (file, lines, wording)."""
    ep_index = _unique_names(endpoints, "endpoint", "endpoints", where)
    for i, endpoint in enumerate(endpoints):
        addresses: tuple[object, ...] = endpoint.addresses     # built in code: anything
        for k, addr in enumerate(addresses):
            akey = f"endpoints[{i}].addresses[{k}]"
            if (not isinstance(addr, tuple) or len(addr) != 2 or not isinstance(addr[0], str)
                    or isinstance(addr[1], bool) or not isinstance(addr[1], int)):
                raise where.error(f"address must be a (host, port) pair, got {addr!r}", akey)
            if not 0 < addr[1] < 65536:
                raise where.error(f"port {addr[1]} out of range (1-65535)", akey)
            try:
                check_host(addr[0], addr[0])
            except ValueError as e:
                raise where.error(str(e), akey) from None

    zone_index = _unique_names(zones, "zone", "zones", where)

    zone_of: dict[str, str] = {}
    for i, z in enumerate(zones):
        prefix = f"zones[{i}]"
        if z.global_:
            if z.parent is not None:
                raise where.error(f"global zone '{z.name}' cannot have a parent "
                                  "(global zones are synced to every zone)", f"{prefix}.parent")
            if z.endpoints:
                raise where.error(f"global zone '{z.name}' cannot have endpoints",
                                  f"{prefix}.endpoints")
        for k, ep in enumerate(z.endpoints):
            key = f"{prefix}.endpoints[{k}]"
            if ep not in ep_index:
                hint = suggest(ep, ep_index) or f" ({where.define_endpoint_hint(ep)})"
                raise where.error(f"endpoint '{ep}' is not defined{hint}", key)
            if ep in zone_of:
                other = zone_of[ep]
                if other == z.name:
                    raise where.error(f"endpoint '{ep}' is listed twice in zone '{z.name}'", key)
                raise where.error(f"endpoint '{ep}' is already in zone '{other}' "
                                  "(an endpoint belongs to one zone only)", key)
            zone_of[ep] = z.name
        if z.parent is not None:
            key = f"{prefix}.parent"
            if z.parent == z.name:
                raise where.error(f"zone '{z.name}' cannot be its own parent", key)
            if z.parent not in zone_index:
                raise where.error(f"zone '{z.parent}' is not defined"
                                  f"{suggest(z.parent, zone_index)}", key)
            if zones[zone_index[z.parent]].global_:
                raise where.error(f"parent zone '{z.parent}' is a global zone "
                                  "(a parent must be a normal zone)", key)

    parents = {z.name: z.parent for z in zones if z.parent is not None}
    for i, z in enumerate(zones):
        chain = [z.name]
        cur = parents.get(z.name)
        while cur is not None and cur not in chain:
            chain.append(cur)
            cur = parents.get(cur)
        if cur == z.name:
            cycle = " -> ".join(chain + [z.name])
            raise where.error(f"zone parents form a cycle: {cycle}", f"zones[{i}].parent")

    if node_name is not None and node_name not in zone_of:
        if node_name not in ep_index:
            hint = suggest(node_name, ep_index)
            raise where.error(
                f"node '{node_name}' is not a defined endpoint{hint}; "
                f"{where.define_endpoint_hint(node_name).replace(' for it', '')} and list it "
                "in the endpoints of its zone", "node.name")
        names = ", ".join(f"'{z.name}'" for z in zones if not z.global_) or "none"
        raise where.error(f"node '{node_name}' is not an endpoint of any zone "
                          f"(zones: {names})", "node.name")


def validate(cfg: RouterConfig) -> None:
    """Check the semantics of a configuration (also one built in code); raise ConfigError.

    :func:`parse_config` and :func:`load_config` call it with line information.
    """
    validate_at(cfg, Where(cfg.path))


def _check_checks(cfg: RouterConfig, where: Where) -> None:
    """A check's zone must exist; its command_endpoint must be us, a peer of our zone or an
    endpoint of a direct child zone (Icinga sends ExecuteCommand only to those)."""
    zone_of = {e: z.name for z in cfg.zones for e in z.endpoints}
    local = zone_of.get(cfg.node.name)
    children = {z.name for z in cfg.zones if z.parent == local and not z.global_}
    names = [z.name for z in cfg.zones]
    seen: set[str] = set()
    catalog: Catalog | None = None
    for i, check in enumerate(cfg.checks):
        prefix = f"checks[{i}]"
        if check.name in seen:
            raise where.error(f"check '{check.name}' is defined twice", f"{prefix}.host")
        seen.add(check.name)
        if check.zone is not None and check.zone not in names:
            raise where.error(f"zone '{check.zone}' is not defined{suggest(check.zone, names)}",
                              f"{prefix}.zone")
        ep = check.command_endpoint
        if (ep is None or ep == cfg.node.name) and check.command not in BUILTIN_CHECK_COMMANDS:
            # Run here: a misspelt command showed only at run time, as an UNKNOWN result
            # every interval (review); Icinga refuses such a Service when it loads.
            if catalog is None:
                catalog = _catalog(cfg, where)
            if check.command not in catalog:
                raise where.error(f"unknown check command '{check.command}' (neither in "
                                  f"checkers/catalog.toml nor in node.command_catalog)"
                                  f"{suggest(check.command, catalog.names())}",
                                  f"{prefix}.command")
        if ep is not None and ep != cfg.node.name:
            if ep not in zone_of:
                raise where.error(f"endpoint '{ep}' is not in any zone"
                                  f"{suggest(ep, list(zone_of))}", f"{prefix}.command_endpoint")
            if zone_of[ep] != local and zone_of[ep] not in children:
                raise where.error(f"command_endpoint '{ep}' must be in our zone or a direct "
                                  f"child zone (it is in '{zone_of[ep]}')",
                                  f"{prefix}.command_endpoint")


def _catalog(cfg: RouterConfig, where: Where) -> Catalog:
    from checkers.catalog import Catalog
    from checkers.errors import CheckerError

    try:
        return Catalog.load_merged(cfg.node.command_catalog)
    except CheckerError as e:
        raise where.error(f"unusable command catalog: {e}", "node.command_catalog") from None


#: EC curves ``[pki] ec_curves`` may name (those OpenSSL signs TLS certificates with).
KNOWN_EC_CURVES = ("secp256r1", "secp384r1", "secp521r1", "secp224r1", "secp256k1",
                   "brainpoolp256r1", "brainpoolp384r1", "brainpoolp512r1")


def _check_pki(cfg: RouterConfig, where: Where) -> None:
    """``[pki]``: positive limits, RSA minimum not below 1024, known curves."""
    p = cfg.pki
    salt: object = p.ticket_salt
    if not isinstance(salt, str):
        raise where.error(f"must be a string, got {salt!r}", "pki.ticket_salt")
    for name in ("leaf_valid_days", "max_pending_requests", "requests_per_minute",
                 "renew_before_days"):
        value: object = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise where.error(f"must be a positive integer, got {value!r}", f"pki.{name}")
    if p.renew_before_days >= p.leaf_valid_days:
        # Every certificate we sign would be due at once: renewed on every check.
        raise where.error(f"must be less than pki.leaf_valid_days ({p.leaf_valid_days}), "
                          f"got {p.renew_before_days}", "pki.renew_before_days")
    bits: object = p.min_rsa_bits
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1024 <= bits <= 16384:
        raise where.error(f"must be an integer from 1024 to 16384, got {bits!r}",
                          "pki.min_rsa_bits")
    for curve in p.ec_curves:
        if curve not in KNOWN_EC_CURVES:
            raise where.error(f"unknown EC curve {curve!r}{suggest(curve, KNOWN_EC_CURVES)}"
                              f" (known: {', '.join(KNOWN_EC_CURVES)})", "pki.ec_curves")


#: Shortest ``[status] admin_token``: a guessable token would open the console's actions.
MIN_ADMIN_TOKEN_LENGTH = 16


def _check_status(cfg: RouterConfig, where: Where) -> None:
    """``[status] admin_token``: empty (read-only console) or at least 16 characters."""
    token: object = cfg.status.admin_token
    if not isinstance(token, str):
        raise where.error(f"must be a string, got {type(token).__name__}",
                          "status.admin_token")
    if token and len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise where.error(f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters (it "
                          f"guards the console's actions), got {len(token)}",
                          "status.admin_token")


def _check_crl(cfg: RouterConfig, where: Where) -> None:
    """``[tls] crl_file``: a readable PEM CRL, signed by our CA, not expired."""
    crl_file: object = cfg.tls.crl_file
    if crl_file is None:
        return
    if not isinstance(crl_file, str) or not crl_file:
        raise where.error(f"must be a file path, got {crl_file!r}", "tls.crl_file")
    try:
        check_crl_file(crl_file, cfg.tls.ca)
    except TLSSetupError as exc:
        raise where.error(str(exc), "tls.crl_file") from None


def validate_at(cfg: RouterConfig, where: Where) -> None:
    """:func:`validate`, with ``where`` placing the errors at the lines of the parsed file."""
    node = cfg.node
    # A configuration built in code may hold anything: its values are checked as objects.
    node_name: object = node.name
    problem = (check_name(node_name, "node") if isinstance(node_name, str)
               else "node name must be a string")
    if problem:
        raise where.error(problem, "node.name")
    data_dir: object = node.data_dir
    if not isinstance(data_dir, str) or not data_dir:
        raise where.error("data_dir must not be empty", "node.data_dir")
    version: object = node.icinga_version
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise where.error(f"must be a positive integer, got {node.icinga_version!r}",
                          "node.icinga_version")
    zones_dir: object = node.zones_dir
    if zones_dir is not None and (not isinstance(zones_dir, str)
                                  or not os.path.isdir(zones_dir)):
        raise where.error(f"zones directory {zones_dir!r} does not exist or is not a "
                          f"directory (config sync reads DIR/<zone>/)", "node.zones_dir")

    listeners: tuple[tuple[str, object], ...] = (("listen", cfg.listen),
                                                 ("status_listen", cfg.status_listen))
    for key, addr in listeners:
        if addr is None:
            continue
        if (not isinstance(addr, tuple) or len(addr) != 2 or not isinstance(addr[0], str)
                or isinstance(addr[1], bool) or not isinstance(addr[1], int)
                or not 0 <= addr[1] <= 65535):
            raise where.error(f"expected a (host, port) pair, got {addr!r}", key)
    if cfg.listen is not None and cfg.listen == cfg.status_listen and cfg.listen[1] != 0:
        raise where.error(f"status_listen must differ from listen "
                          f"({format_address(*cfg.listen)})", "status_listen")

    for key, value, choices in (("log_level", cfg.log_level, LOG_LEVELS),
                                ("results", cfg.results, RESULTS_MODES),
                                ("node.log_format", cfg.node.log_format, ("text", "json")),
                                ("objects.unknown", cfg.objects.unknown, UNKNOWN_MODES)):
        if value not in choices:
            options = ", ".join(f"'{c}'" for c in choices)
            raise where.error(f"invalid value {value!r}: expected one of {options}", key)

    for f in dataclasses.fields(Limits):
        value = getattr(cfg.limits, f.name)
        if f.name in ("new_connections_per_second", "peer_bytes_per_second",
                      "peer_messages_per_second", "agent_receive_buffer",
                      "admission_us_per_turn"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise where.error(f"must be an integer >= 0 (0: off), got {value!r}",
                                  f"limits.{f.name}")
            if f.name == "agent_receive_buffer" and value > MAX_RECEIVE_BUFFER:
                # SO_RCVBUF takes a C int: above it every agent's session start raised
                # (review); the kernel caps it far lower anyway (net.core.rmem_max).
                raise where.error(f"must be at most {MAX_RECEIVE_BUFFER} (1 GiB), got "
                                  f"{value!r}", f"limits.{f.name}")
        elif f.name == "handshake_threads":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 256:
                raise where.error(f"must be an integer from 0 to 256, got {value!r}",
                                  f"limits.{f.name}")
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise where.error(f"must be a positive integer, got {value!r}", f"limits.{f.name}")
    for kind in ("bytes", "messages"):
        low = getattr(cfg.limits, f"send_queue_low_{kind}")
        high = getattr(cfg.limits, f"send_queue_high_{kind}")
        if low >= high:
            key = where.first_line_key(f"limits.send_queue_low_{kind}",
                                       f"limits.send_queue_high_{kind}")
            raise where.error(f"send_queue_low_{kind} ({low}) must be lower than "
                              f"send_queue_high_{kind} ({high})", key)

    for f in dataclasses.fields(Timeouts):
        value = getattr(cfg.timeouts, f.name)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0):
            raise where.error(f"must be a positive number of seconds, got {value!r}",
                              f"timeouts.{f.name}")
    t = cfg.timeouts
    if t.reconnect_min > t.reconnect_max:
        key = where.first_line_key("timeouts.reconnect_min", "timeouts.reconnect_max")
        raise where.error(f"reconnect_min ({t.reconnect_min:g}) must not exceed reconnect_max "
                          f"({t.reconnect_max:g})", key)
    if t.heartbeat_interval >= t.liveness:
        key = where.first_line_key("timeouts.heartbeat_interval", "timeouts.liveness")
        raise where.error(f"heartbeat_interval ({t.heartbeat_interval:g}) must be shorter than "
                          f"liveness ({t.liveness:g}), or peers time out while idle", key)

    check_topology_at(cfg.zones, cfg.endpoints, node.name, where)

    max_learned: object = cfg.objects.max_learned_per_zone
    if isinstance(max_learned, bool) or not isinstance(max_learned, int) or max_learned <= 0:
        raise where.error(f"must be a positive integer, got {max_learned!r}",
                          "objects.max_learned_per_zone")

    zone_names = [z.name for z in cfg.zones]
    hosts: Iterable[tuple[object, str]] = cfg.objects.hosts.items()
    for host, zone in hosts:
        key = f"objects.hosts.{host}"
        if not isinstance(host, str) or not host:
            raise where.error("host name must not be empty", key)
        if zone not in zone_names:
            raise where.error(f"zone '{zone}' is not defined{suggest(zone, zone_names)}", key)

    _check_checks(cfg, where)
    _check_pki(cfg, where)
    check_writers(cfg.writers, where)
    _check_status(cfg, where)
    _check_crl(cfg, where)

    ep_names = {e.name: i for i, e in enumerate(cfg.endpoints)}
    durations: Iterable[tuple[str, object]] = cfg.endpoint_log_duration.items()
    for name, seconds in durations:
        key = f"endpoints[{ep_names[name]}].log_duration" if name in ep_names else \
            "endpoints"
        if name not in ep_names:
            raise where.error(f"log_duration given for unknown endpoint '{name}'", key)
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or not math.isfinite(seconds) or seconds < 0):
            raise where.error(f"must be zero or a positive number of seconds, got {seconds!r}",
                              key)
