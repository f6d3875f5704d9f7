"""``[[writers]]``: parsing the TOML tables into :class:`WriterSpec` and checking them.

Kept beside the builder (which calls :func:`build_writers`) and the validator (which calls
:func:`check_writers`) so the writer options live in one place. Type-specific options on a
writer of another type are refused, naming the key and line, because a ``dsn`` on a
Graphite writer is a mistake the user wants to hear about.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from router.config.model import WRITER_TYPES, FrozenMap, WriterSpec
from router.config.source import Where
from router.config.units import (
    check_host,
    check_name,
    parse_duration,
    parse_port,
    parse_size,
    suggest,
    type_name,
)


__all__ = ["WRITER_KEYS", "build_writers", "check_writers"]

_COMMON = ("name", "type", "flush_interval", "flush_threshold", "max_backlog_bytes",
           "max_backlog_age", "timeout")
_BY_TYPE: dict[str, tuple[str, ...]] = {
    "graphite": ("host", "port", "host_name_template", "service_name_template",
                 "enable_send_thresholds", "enable_send_metadata"),
    "influxdb": ("url", "database", "username", "password", "host_template",
                 "service_template", "enable_send_thresholds", "enable_send_metadata"),
    "postgresql": ("dsn", "enable_ha", "failover_timeout"),
}
#: Every key a ``[[writers]]`` table may hold (for the builder's unknown-key check).
WRITER_KEYS: tuple[str, ...] = _COMMON + tuple(dict.fromkeys(
    k for keys in _BY_TYPE.values() for k in keys))
_DURATIONS = ("flush_interval", "max_backlog_age", "timeout", "failover_timeout")
_STRINGS = ("host_name_template", "service_name_template", "database", "username",
            "password", "dsn", "url")
_BOOLS = ("enable_send_thresholds", "enable_send_metadata", "enable_ha")
#: Writer names become a directory name and a metric label.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _template(value: Any, key: str, where: Where, default: Mapping[str, Any]) -> FrozenMap[Any]:
    """An InfluxDB ``host_template``/``service_template`` table: measurement and tags."""
    if not isinstance(value, dict):
        raise where.error(f"expected a table with 'measurement' and 'tags', got "
                          f"{type_name(value)}", key)
    for k in value:
        if k not in ("measurement", "tags"):
            raise where.error(f"unknown key '{k}'{suggest(k, ('measurement', 'tags'))}",
                              f"{key}.{k}")
    measurement = value.get("measurement", default["measurement"])
    if not isinstance(measurement, str) or not measurement.strip():
        raise where.error("measurement must be a non-empty string", f"{key}.measurement")
    tags = value.get("tags", default["tags"])
    if not isinstance(tags, Mapping):
        raise where.error(f"expected a table of tag = \"template\", got {type_name(tags)}",
                          f"{key}.tags")
    for tag, template in tags.items():
        if not isinstance(template, str):
            raise where.error(f"expected a string, got {type_name(template)}",
                              f"{key}.tags.{tag}")
    return FrozenMap({"measurement": measurement, "tags": FrozenMap(tags)})


def build_writers(raw: Any, where: Where) -> tuple[WriterSpec, ...]:
    """The ``[[writers]]`` array of tables, types and units checked; ranges in
    :func:`check_writers`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise where.error("expected [[writers]] tables", "writers")
    specs = []
    for i, t in enumerate(raw):
        prefix = f"writers[{i}]"
        if not isinstance(t, dict):
            raise where.error(f"expected a table ([[writers]]), got {type_name(t)}", prefix)
        for required in ("name", "type"):
            if required not in t:
                raise where.error(f"missing required key '{required}' in [[writers]]",
                                  f"{prefix}.{required}" if i or t else prefix)
        kind = t["type"]
        if not isinstance(kind, str) or kind.strip().lower() not in WRITER_TYPES:
            options = ", ".join(f"'{c}'" for c in WRITER_TYPES)
            hint = suggest(kind, WRITER_TYPES) if isinstance(kind, str) else ""
            raise where.error(f"invalid value {kind!r}: expected one of {options}{hint}",
                              f"{prefix}.type")
        kind = kind.strip().lower()
        allowed = _COMMON + _BY_TYPE[kind]
        values: dict[str, Any] = {"type": kind}
        for key, value in t.items():
            full = f"{prefix}.{key}"
            if key not in allowed:
                owners = [k for k, keys in _BY_TYPE.items() if key in keys]
                hint = (f" (it is an option of type {' or '.join(map(repr, owners))})"
                        if owners else suggest(key, allowed))
                raise where.error(f"unknown key '{key}' in [[writers]] of type '{kind}'{hint}",
                                  full)
            if key == "type":
                continue
            if key == "name":
                if not isinstance(value, str):
                    raise where.error(f"expected a string, got {type_name(value)}", full)
                values[key] = value.strip()
            elif key in _DURATIONS:
                try:
                    values[key] = parse_duration(value)
                except ValueError as e:
                    raise where.error(str(e), full) from None
            elif key == "max_backlog_bytes":
                try:
                    values[key] = parse_size(value)
                except ValueError as e:
                    raise where.error(str(e), full) from None
            elif key in ("flush_threshold",):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise where.error(f"expected an integer, got {type_name(value)}", full)
                values[key] = value
            elif key == "port":
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise where.error(f"expected a port number, got {type_name(value)}", full)
                try:
                    values[key] = parse_port(str(value).strip(), str(value), False)
                except ValueError as e:
                    raise where.error(str(e), full) from None
            elif key in _BOOLS:
                if not isinstance(value, bool):
                    raise where.error(f"expected true or false, got {type_name(value)}", full)
                values[key] = value
            elif key in ("host_template", "service_template"):
                default = getattr(WriterSpec("x", "influxdb"), key)
                values[key] = _template(value, full, where, default)
            elif key == "host" or key in _STRINGS:
                if not isinstance(value, str):
                    raise where.error(f"expected a string, got {type_name(value)}", full)
                values[key] = value.strip() if key in ("host", "url", "database") else value
        specs.append(WriterSpec(**values))
    return tuple(specs)


def _positive(value: object, key: str, where: Where, what: str = "number of seconds") -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise where.error(f"must be a positive {what}, got {value!r}", key)


def check_writers(writers: tuple[WriterSpec, ...], where: Where) -> None:
    """Semantic checks of the writers (also for configurations built in code)."""
    seen: dict[str, int] = {}
    for i, w in enumerate(writers):
        prefix = f"writers[{i}]"
        name: object = w.name
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problem = check_name(name, "writer") if isinstance(name, str) else None
            raise where.error(problem or f"writer name {name!r} must be 1-100 letters, digits, "
                              "'_', '.' or '-' (it names a directory and a metric label)",
                              f"{prefix}.name")
        if name in seen:
            first = where.line(f"writers[{seen[name]}]")
            at = f" (first at line {first})" if first else ""
            raise where.error(f"writer '{name}' is defined twice{at}", f"{prefix}.name")
        seen[name] = i
        if w.type not in WRITER_TYPES:
            raise where.error(f"invalid type {w.type!r}", f"{prefix}.type")
        for key in ("flush_interval", "max_backlog_age", "timeout", "failover_timeout"):
            _positive(getattr(w, key), f"{prefix}.{key}", where)
        _positive(w.flush_threshold, f"{prefix}.flush_threshold", where, "integer")
        _positive(w.max_backlog_bytes, f"{prefix}.max_backlog_bytes", where, "size")
        if w.max_backlog_bytes < 1024 * 1024:
            raise where.error("must be at least 1MiB", f"{prefix}.max_backlog_bytes")
        if w.type == "graphite":
            try:
                check_host(w.host, w.host)
            except ValueError as e:
                raise where.error(str(e), f"{prefix}.host") from None
            for key in ("host_name_template", "service_name_template"):
                if not getattr(w, key).strip():
                    raise where.error("must not be empty", f"{prefix}.{key}")
        elif w.type == "influxdb":
            try:
                parts = urlsplit(w.url)
                port = parts.port       # ValueError when not a number or out of range
            except ValueError as e:
                raise where.error(f"not a usable URL ({e}): {w.url!r}", f"{prefix}.url") \
                    from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise where.error(f"expected an http:// or https:// URL, got {w.url!r}",
                                  f"{prefix}.url")
            if port == 0:
                raise where.error(f"port 0 in {w.url!r}", f"{prefix}.url")
            if not w.database.strip():
                raise where.error("must not be empty", f"{prefix}.database")
            if (w.username is None) != (w.password is None):
                raise where.error("username and password go together",
                                  f"{prefix}.{'password' if w.password is None else 'username'}")
        elif w.type == "postgresql":
            if not w.dsn or not w.dsn.strip():
                raise where.error("a postgresql writer needs 'dsn' (e.g. "
                                  "\"postgresql://user@host:5432/icinga\")", f"{prefix}.dsn")


