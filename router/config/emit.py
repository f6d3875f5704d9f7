"""TOML output: a configuration or a zone tree written as TOML.

:func:`config_to_toml` writes what :func:`router.config.parse_config` reads back to an equal
configuration; :func:`topology_to_toml` is shared with the zones.conf import. Output only:
the reading side uses nothing here but :func:`toml_str`, to quote names in hints.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from router.config.model import (
    DEFAULT_ICINGA_VERSION,
    DEFAULT_LOG_DURATION,
    CheckSpec,
    Limits,
    ObjectsConfig,
    PKIConfig,
    RouterConfig,
    Timeouts,
    TLSConfig,
)
from router.config.units import format_address
from router.routing import EndpointSpec, ZoneSpec

__all__ = ["config_to_toml", "topology_to_toml", "toml_str"]


_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_str(s: str) -> str:
    """``s`` as a TOML basic string (quoted, escaped)."""
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 32 or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.match(key) else toml_str(key)


def _toml_num(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(toml_str(i) for i in items) + "]"


def topology_to_toml(zones: Iterable[ZoneSpec], endpoints: Iterable[EndpointSpec],
                     log_durations: Mapping[str, float] | None = None) -> str:
    """``[[zones]]`` and ``[[endpoints]]`` tables; ``log_duration`` only when not 1 day."""
    out: list[str] = []
    for z in zones:
        out.append("[[zones]]")
        out.append(f"name = {toml_str(z.name)}")
        if z.endpoints:
            out.append(f"endpoints = {_toml_list(z.endpoints)}")
        if z.parent is not None:
            out.append(f"parent = {toml_str(z.parent)}")
        if z.global_:
            out.append("global = true")
        out.append("")
    durations = log_durations or {}
    for e in endpoints:
        out.append("[[endpoints]]")
        out.append(f"name = {toml_str(e.name)}")
        if e.addresses:
            out.append(f"addresses = {_toml_list(format_address(h, p) for h, p in e.addresses)}")
        seconds = durations.get(e.name, DEFAULT_LOG_DURATION)
        if seconds != DEFAULT_LOG_DURATION:
            out.append(f"log_duration = {_toml_num(seconds)}")
        out.append("")
    return "\n".join(out)


def config_to_toml(cfg: RouterConfig) -> str:
    """Render a configuration as TOML that :func:`parse_config` reads back to an equal one
    (except ``path``). Values equal to their defaults are left out."""
    out = ["# router configuration (reference: docs/configuration.md)", ""]

    def addr(a: tuple[str, int] | None) -> str:
        return toml_str("none" if a is None else format_address(*a))

    out.append(f"listen = {addr(cfg.listen)}")
    out.append(f"status_listen = {addr(cfg.status_listen)}")
    out.append(f"log_level = {toml_str(cfg.log_level)}")
    out.append(f"results = {toml_str(cfg.results)}")
    out += ["", "[node]", f"name = {toml_str(cfg.node.name)}",
            f"data_dir = {toml_str(cfg.node.data_dir)}"]
    if cfg.node.icinga_version != DEFAULT_ICINGA_VERSION:
        out.append(f"icinga_version = {cfg.node.icinga_version}")
    if cfg.node.accept_commands:
        out.append("accept_commands = true")
    if cfg.node.accept_config:
        out.append("accept_config = true")
    if cfg.node.zones_dir is not None:
        out.append(f"zones_dir = {toml_str(cfg.node.zones_dir)}")
    out.append("")

    default_tls = TLSConfig.for_node(cfg.node.name, cfg.node.data_dir)
    tls_lines = [f"{k} = {toml_str(getattr(cfg.tls, k))}"
                 for k in ("ca", "cert", "key", "library", "crl_file")
                 if getattr(cfg.tls, k) != getattr(default_tls, k)]
    if tls_lines:
        out += ["[tls]", *tls_lines, ""]

    for section, obj, default in (("limits", cfg.limits, Limits()),
                                  ("timeouts", cfg.timeouts, Timeouts())):
        body = [f"{f.name} = {_toml_num(getattr(obj, f.name))}"
                for f in dataclasses.fields(obj)
                if getattr(obj, f.name) != getattr(default, f.name)]
        if body:
            out += [f"[{section}]", *body, ""]

    objects_body = []
    if cfg.objects.unknown != ObjectsConfig().unknown:
        objects_body.append(f"unknown = {toml_str(cfg.objects.unknown)}")
    if cfg.objects.max_learned_per_zone != ObjectsConfig().max_learned_per_zone:
        objects_body.append(f"max_learned_per_zone = {cfg.objects.max_learned_per_zone}")
    if objects_body:
        out += ["[objects]", *objects_body, ""]
    if cfg.objects.hosts:
        out.append("[objects.hosts]")
        out += [f"{_toml_key(h)} = {toml_str(z)}" for h, z in cfg.objects.hosts.items()]
        out.append("")

    pki_body = [f"{f.name} = {_toml_value(getattr(cfg.pki, f.name))}"
                for f in dataclasses.fields(cfg.pki)
                if getattr(cfg.pki, f.name) != getattr(PKIConfig(), f.name)]
    if pki_body:
        out += ["[pki]", *pki_body, ""]

    out.append(topology_to_toml(cfg.zones, cfg.endpoints, cfg.endpoint_log_duration))
    default_check = CheckSpec("", "")
    for check in cfg.checks:
        out += ["", "[[checks]]", f"host = {toml_str(check.host)}",
                f"command = {toml_str(check.command)}"]
        for key in ("service", "command_endpoint", "zone"):
            value = getattr(check, key)
            if value is not None:
                out.append(f"{key} = {toml_str(value)}")
        for key in ("interval", "retry_interval", "max_check_attempts"):
            value = getattr(check, key)
            if value != getattr(default_check, key):
                out.append(f"{key} = {value!r}")
        if check.macros:
            out.append("[checks.macros]")
            for name, value in check.macros.items():
                out.append(f"{_toml_key(name)} = {_toml_value(value)}")
    return "\n".join(out).rstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    """A macro value (string, number, bool or list of those) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return toml_str(str(value))
