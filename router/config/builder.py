"""The builder that turns a parsed TOML document into a :class:`RouterConfig`.

It checks what each table says on its own (unknown keys with did-you-mean hints, value
types, required keys, units) and builds the dataclasses. What needs the whole configuration
(the zone tree, references between sections, limits against each other) is left to
:mod:`router.config.validate`, which also checks configurations built in code.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from router.config.model import (
    DEFAULT_ICINGA_VERSION,
    DEFAULT_LISTEN,
    DEFAULT_PORT,
    DEFAULT_STATUS_LISTEN,
    LOG_LEVELS,
    RESULTS_MODES,
    TLS_LIBRARIES,
    UNKNOWN_MODES,
    CheckSpec,
    FrozenMap,
    Limits,
    NodeConfig,
    ObjectsConfig,
    PKIConfig,
    RouterConfig,
    StatusConfig,
    Timeouts,
    TLSConfig,
)
from router.config.source import Where, join_key
from router.config.writers import WRITER_KEYS, build_writers
from router.config.units import (
    check_host,
    check_name,
    parse_address,
    parse_duration,
    parse_port,
    parse_size,
    suggest,
    type_name,
)
from router.errors import ConfigError
from router.routing import EndpointSpec, ZoneSpec

__all__ = ["Builder"]


_TOP_KEYS = ("node", "listen", "status_listen", "log_level", "results", "tls", "zones",
             "endpoints", "limits", "timeouts", "objects", "checks", "pki", "status",
             "writers")
_TOP_SCALARS = ("listen", "status_listen", "log_level", "results")
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "node": ("name", "data_dir", "icinga_version", "accept_commands", "command_catalog",
             "accept_config", "zones_dir", "log_format"),
    "tls": ("ca", "cert", "key", "library", "crl_file"),
    "zones": ("name", "endpoints", "parent", "global"),
    "endpoints": ("name", "addresses", "host", "port", "log_duration"),
    "limits": tuple(f.name for f in dataclasses.fields(Limits)),
    "timeouts": tuple(f.name for f in dataclasses.fields(Timeouts)),
    "objects": ("unknown", "hosts", "max_learned_per_zone"),
    "checks": ("host", "service", "command", "macros", "interval", "retry_interval",
               "max_check_attempts", "command_endpoint", "zone"),
    "pki": tuple(f.name for f in dataclasses.fields(PKIConfig)),
    "status": tuple(f.name for f in dataclasses.fields(StatusConfig)),
    "writers": WRITER_KEYS,
}
_SIZE_LIMITS = frozenset({"max_message_size_anonymous", "max_message_size_child",
                          "max_message_size_peer", "send_queue_high_bytes",
                          "send_queue_low_bytes", "max_config_update_bytes",
                          "peer_bytes_per_second", "agent_receive_buffer"})


def _section_label(section: str) -> str:
    if not section:
        return "at the top level"
    if section in ("zones", "endpoints", "checks", "writers"):
        return f"in [[{section}]]"
    return f"in [{section}]"


class Builder:
    """Checks keys and types of the parsed document and builds the dataclasses."""

    def __init__(self, doc: dict[str, Any], where: Where, base_dir: str) -> None:
        self.doc = doc
        self.where = where
        self.base_dir = base_dir

    def err(self, message: str, key: str) -> ConfigError:
        return self.where.error(message, key)

    # -- generic checks -------------------------------------------------------------------

    def check_keys(self, table: Mapping[str, Any], section: str, prefix: str) -> None:
        allowed = _TOP_KEYS if not section else _SECTION_KEYS[section]
        for key in table:
            if key in allowed:
                continue
            where = _section_label(section)
            if section and key in _TOP_SCALARS:
                hint = (f" ('{key}' is a top-level key: move it above the first [table] "
                        "header)")
            else:
                owners = [s for s, keys in _SECTION_KEYS.items() if key in keys and s != section]
                hint = suggest(key, allowed)
                if not hint and len(owners) == 1:
                    hint = f" (it belongs {_section_label(owners[0])})"
            raise self.err(f"unknown key '{key}' {where}{hint}", join_key(prefix, key))

    def table(self, value: Any, key: str, header: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(f"expected a table ({header}), got {type_name(value)}", key)
        return value

    def string(self, value: Any, key: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.err(f"expected a string, got {type_name(value)}", key)
        if not allow_empty and not value.strip():
            raise self.err("must not be empty", key)
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(f"expected true or false, got {type_name(value)}", key)
        return value

    def integer(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(f"expected an integer, got {type_name(value)}", key)
        return value

    def string_list(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.err(f"expected an array of strings, got {type_name(value)}", key)
        return [self.string(v, f"{key}[{i}]") for i, v in enumerate(value)]

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, key).strip().lower()
        if text not in choices:
            options = ", ".join(f"'{c}'" for c in choices)
            raise self.err(f"invalid value {value!r}: expected one of {options}"
                           f"{suggest(text, choices)}", key)
        return text

    def file_path(self, value: Any, key: str) -> str:
        text = os.path.expanduser(self.string(value, key))
        return os.path.normpath(os.path.join(self.base_dir, text))

    def listen(self, value: Any, key: str, default: tuple[str, int]) -> tuple[str, int] | None:
        if value is None:
            return default
        if value is False or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        if not isinstance(value, str):
            raise self.err(f"expected \"host:port\", \"none\" or false, got "
                           f"{type_name(value)}", key)
        try:
            return parse_address(value, default[1], allow_port_zero=True)
        except ValueError as e:
            raise self.err(str(e), key) from None

    # -- sections -------------------------------------------------------------------------

    def build(self) -> RouterConfig:
        doc = self.doc
        self.check_keys(doc, "", "")
        node = self.node()
        listen = self.listen(doc.get("listen"), "listen", DEFAULT_LISTEN)
        status_listen = self.listen(doc.get("status_listen"), "status_listen",
                                    DEFAULT_STATUS_LISTEN)
        log_level = "info"
        if "log_level" in doc:
            log_level = self.choice(doc["log_level"], "log_level", LOG_LEVELS)
        results = "auto"
        if "results" in doc:
            value = doc["results"]
            if isinstance(value, bool):
                results = "on" if value else "off"
            else:
                results = self.choice(value, "results", RESULTS_MODES)
        tls = self.tls(node)
        zones = self.zones()
        endpoints, durations = self.endpoints()
        return RouterConfig(
            node=node, listen=listen, status_listen=status_listen, tls=tls, zones=zones,
            endpoints=endpoints, limits=self.limits(), timeouts=self.timeouts(),
            objects=self.objects(), results=results, log_level=log_level,
            path=self.where.path, endpoint_log_duration=durations, checks=self.checks(),
            pki=self.pki(), status=self.status(),
            writers=build_writers(doc.get("writers"), self.where))

    def node(self) -> NodeConfig:
        if "node" not in self.doc:
            raise self.err("missing [node] table (it needs at least 'name' and 'data_dir')",
                           "node")
        t = self.table(self.doc["node"], "node", "[node]")
        self.check_keys(t, "node", "node")
        for required in ("name", "data_dir"):
            if required not in t:
                raise self.err(f"missing required key '{required}' in [node]",
                               f"node.{required}")
        name = self.string(t["name"], "node.name").strip()
        problem = check_name(name, "node")
        if problem is None and ("/" in name or "\\" in name):
            problem = f"node name {name!r} must not contain a path separator"
        if problem:
            raise self.err(problem, "node.name")
        data_dir = self.file_path(t["data_dir"], "node.data_dir")
        version = DEFAULT_ICINGA_VERSION
        if "icinga_version" in t:
            version = self.integer(t["icinga_version"], "node.icinga_version")
            if version <= 0:
                raise self.err(f"must be a positive integer, got {version}",
                               "node.icinga_version")
        accept = False
        if "accept_commands" in t:
            accept = self.boolean(t["accept_commands"], "node.accept_commands")
        catalog = None
        if "command_catalog" in t:
            catalog = self.file_path(t["command_catalog"], "node.command_catalog")
            from checkers.catalog import Catalog
            from checkers.errors import CheckerError

            try:
                Catalog.load_merged(catalog)
            except CheckerError as e:
                raise self.err(f"unusable command catalog: {e}", "node.command_catalog") \
                    from None
        accept_config = False
        if "accept_config" in t:
            accept_config = self.boolean(t["accept_config"], "node.accept_config")
        zones_dir = None
        if "zones_dir" in t:
            zones_dir = self.file_path(t["zones_dir"], "node.zones_dir")
        log_format = "text"
        if "log_format" in t:
            log_format = self.choice(t["log_format"], "node.log_format", ("text", "json"))
        return NodeConfig(name=name, data_dir=data_dir, icinga_version=version,
                          accept_commands=accept, command_catalog=catalog,
                          accept_config=accept_config, zones_dir=zones_dir,
                          log_format=log_format)

    def tls(self, node: NodeConfig) -> TLSConfig:
        t = self.table(self.doc.get("tls"), "tls", "[tls]")
        self.check_keys(t, "tls", "tls")
        default = TLSConfig.for_node(node.name, node.data_dir)
        values = {k: (self.file_path(t[k], f"tls.{k}") if k in t else getattr(default, k))
                  for k in ("ca", "cert", "key")}
        library = t.get("library", default.library)
        if library not in TLS_LIBRARIES:
            raise self.err(f"unknown TLS library {library!r}; expected one of "
                           f"{', '.join(repr(x) for x in TLS_LIBRARIES)}", "tls.library")
        crl_file = self.file_path(t["crl_file"], "tls.crl_file") if "crl_file" in t else None
        return TLSConfig(**values, library=library, crl_file=crl_file)

    def zones(self) -> tuple[ZoneSpec, ...]:
        raw = self.doc.get("zones", [])
        if not isinstance(raw, list):
            raise self.err(f"expected [[zones]] entries, got {type_name(raw)}", "zones")
        zones = []
        for i, t in enumerate(raw):
            prefix = f"zones[{i}]"
            t = self.table(t, prefix, "[[zones]]")
            self.check_keys(t, "zones", prefix)
            if "name" not in t:
                raise self.err("missing required key 'name' in [[zones]]", f"{prefix}.name")
            name = self.string(t["name"], f"{prefix}.name").strip()
            endpoints = tuple(s.strip() for s in
                              self.string_list(t.get("endpoints", []), f"{prefix}.endpoints"))
            parent = None
            if "parent" in t:
                parent = self.string(t["parent"], f"{prefix}.parent").strip()
            global_ = self.boolean(t["global"], f"{prefix}.global") if "global" in t else False
            zones.append(ZoneSpec(name=name, endpoints=endpoints, parent=parent,
                                  global_=global_))
        return tuple(zones)

    def endpoints(self) -> tuple[tuple[EndpointSpec, ...], dict[str, float]]:
        raw = self.doc.get("endpoints", [])
        if not isinstance(raw, list):
            raise self.err(f"expected [[endpoints]] entries, got {type_name(raw)}",
                           "endpoints")
        endpoints = []
        durations: dict[str, float] = {}
        for i, t in enumerate(raw):
            prefix = f"endpoints[{i}]"
            t = self.table(t, prefix, "[[endpoints]]")
            self.check_keys(t, "endpoints", prefix)
            if "name" not in t:
                raise self.err("missing required key 'name' in [[endpoints]]",
                               f"{prefix}.name")
            name = self.string(t["name"], f"{prefix}.name").strip()
            addresses: list[tuple[str, int]] = []
            if "addresses" in t:
                if "host" in t or "port" in t:
                    key = f"{prefix}.host" if "host" in t else f"{prefix}.port"
                    raise self.err("use either 'addresses' or 'host'/'port', not both", key)
                for k, item in enumerate(self.string_list(t["addresses"],
                                                          f"{prefix}.addresses")):
                    try:
                        addresses.append(parse_address(item))
                    except ValueError as e:
                        raise self.err(str(e), f"{prefix}.addresses[{k}]") from None
            elif "host" in t:
                host = self.string(t["host"], f"{prefix}.host", allow_empty=True).strip()
                port = DEFAULT_PORT
                if "port" in t:
                    port = self.port(t["port"], f"{prefix}.port")
                if host:
                    if host.startswith("[") and host.endswith("]"):
                        host = host[1:-1]
                    try:
                        check_host(host, host)
                    except ValueError as e:
                        raise self.err(str(e), f"{prefix}.host") from None
                    addresses.append((host, port))
            elif "port" in t:
                raise self.err("'port' needs a 'host' (or use addresses = [\"host:port\"])",
                               f"{prefix}.port")
            if "log_duration" in t:
                key = f"{prefix}.log_duration"
                try:
                    seconds = parse_duration(t["log_duration"])
                except ValueError as e:
                    raise self.err(str(e), key) from None
                if not math.isfinite(seconds) or seconds < 0:
                    raise self.err("must be zero or a positive number of seconds", key)
                durations[name] = seconds
            endpoints.append(EndpointSpec(name=name, addresses=tuple(addresses)))
        return tuple(endpoints), durations

    def port(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.err(f"expected a port number, got {type_name(value)}", key)
        text = str(value).strip()
        try:
            return parse_port(text, text, False)
        except ValueError as e:
            raise self.err(str(e), key) from None

    def limits(self) -> Limits:
        t = self.table(self.doc.get("limits"), "limits", "[limits]")
        self.check_keys(t, "limits", "limits")
        values = {}
        for name, value in t.items():
            key = f"limits.{name}"
            if name in _SIZE_LIMITS:
                try:
                    values[name] = parse_size(value)
                except ValueError as e:
                    raise self.err(str(e), key) from None
            else:
                values[name] = self.integer(value, key)
        return Limits(**values)

    def timeouts(self) -> Timeouts:
        t = self.table(self.doc.get("timeouts"), "timeouts", "[timeouts]")
        self.check_keys(t, "timeouts", "timeouts")
        values = {}
        for name, value in t.items():
            try:
                values[name] = parse_duration(value)
            except ValueError as e:
                raise self.err(str(e), f"timeouts.{name}") from None
        return Timeouts(**values)

    def checks(self) -> tuple[CheckSpec, ...]:
        raw = self.doc.get("checks", [])
        if not isinstance(raw, list):
            raise self.err("expected [[checks]] tables", "checks")
        checks = []
        for i, t in enumerate(raw):
            prefix = f"checks[{i}]"
            t = self.table(t, prefix, "[[checks]]")
            self.check_keys(t, "checks", prefix)
            for required in ("host", "command"):
                if required not in t:
                    raise self.err(f"missing required key '{required}' in [[checks]]",
                                   f"{prefix}.{required}")
            values: dict[str, Any] = {
                "host": self.string(t["host"], f"{prefix}.host").strip(),
                "command": self.string(t["command"], f"{prefix}.command").strip()}
            for key in ("service", "command_endpoint", "zone"):
                if key in t:
                    values[key] = self.string(t[key], f"{prefix}.{key}").strip()
            for key in ("interval", "retry_interval"):
                if key in t:
                    try:
                        values[key] = parse_duration(t[key])
                    except ValueError as e:
                        raise self.err(str(e), f"{prefix}.{key}") from None
                    if not math.isfinite(values[key]) or values[key] <= 0:
                        raise self.err("must be a positive number of seconds",
                                       f"{prefix}.{key}")
            if "max_check_attempts" in t:
                values["max_check_attempts"] = self.integer(t["max_check_attempts"],
                                                            f"{prefix}.max_check_attempts")
                if values["max_check_attempts"] < 1:
                    raise self.err("must be at least 1", f"{prefix}.max_check_attempts")
            if "macros" in t:
                values["macros"] = FrozenMap(self.table(t["macros"], f"{prefix}.macros",
                                                        "[checks.macros]"))
            checks.append(CheckSpec(**values))
        return tuple(checks)

    def pki(self) -> PKIConfig:
        """``[pki]``: types here; ranges in validate (configurations built in code too)."""
        t = self.table(self.doc.get("pki"), "pki", "[pki]")
        self.check_keys(t, "pki", "pki")
        values: dict[str, Any] = {}
        for name, value in t.items():
            key = f"pki.{name}"
            if name == "ticket_salt":
                values[name] = self.string(value, key, allow_empty=True)
            elif name == "ec_curves":
                values[name] = tuple(c.strip().lower() for c in self.string_list(value, key))
            elif name == "renew_with_new_key":
                values[name] = self.boolean(value, key)
            else:
                values[name] = self.integer(value, key)
        return PKIConfig(**values)

    def status(self) -> StatusConfig:
        """``[status]``: the console's admin token (its length is checked in validate)."""
        t = self.table(self.doc.get("status"), "status", "[status]")
        self.check_keys(t, "status", "status")
        if "admin_token" not in t:
            return StatusConfig()
        return StatusConfig(admin_token=self.string(t["admin_token"], "status.admin_token",
                                                    allow_empty=True).strip())

    def objects(self) -> ObjectsConfig:
        t = self.table(self.doc.get("objects"), "objects", "[objects]")
        self.check_keys(t, "objects", "objects")
        unknown = "reject"
        if "unknown" in t:
            unknown = self.choice(t["unknown"], "objects.unknown", UNKNOWN_MODES)
        max_learned = ObjectsConfig().max_learned_per_zone
        if "max_learned_per_zone" in t:
            max_learned = self.integer(t["max_learned_per_zone"],
                                       "objects.max_learned_per_zone")
        hosts = self.table(t.get("hosts"), "objects.hosts", "[objects.hosts]")
        for host, zone in hosts.items():
            if isinstance(zone, dict):
                dotted = host
                while isinstance(zone, dict) and len(zone) == 1:
                    (sub, zone), = zone.items()
                    dotted = f"{dotted}.{sub}"
                raise self.err(f"expected a zone name, got a table: write host names that "
                               f"contain dots in quotes, e.g. \"{dotted}\" = \"zone\"",
                               f"objects.hosts.{host}")
            self.string(zone, f"objects.hosts.{host}")
        return ObjectsConfig(unknown=unknown,
                             hosts=FrozenMap((h, z.strip()) for h, z in hosts.items()),
                             max_learned_per_zone=max_learned)
