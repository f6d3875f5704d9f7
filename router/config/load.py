"""Entry points: load or parse a configuration, load a zone tree, quickstart.

The configuration is one TOML file (``docs/configuration.md`` is the reference for every
key). :func:`load_config` / :func:`parse_config` turn it into a frozen
:class:`RouterConfig`; every problem raises :class:`router.errors.ConfigError` carrying the
file, the 1-based line and the dotted key path (``zones[1].parent``, 0-based indices), so
``router config check`` can print one precise line::

    router.toml:14: [zones[1].parent] zone 'mastr' is not defined (did you mean 'master'?)

The zone tree can also come from an Icinga ``zones.conf`` (:mod:`router.config.zonesconf`):
:func:`load_zones` accepts either format, and :func:`quickstart_config` builds a whole
configuration from the ``router serve`` command-line options. These functions chain the
other modules (read, build, validate), so they sit on top of them.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from router.config.builder import Builder
from router.config.model import (
    DEFAULT_ICINGA_VERSION,
    DEFAULT_LISTEN,
    DEFAULT_STATUS_LISTEN,
    NodeConfig,
    RouterConfig,
    TLSConfig,
)
from router.config.source import Where, load_toml, read_text
from router.config.units import check_name, parse_address
from router.config.validate import check_topology_at, validate_at
from router.config.zonesconf import parse_zones_conf
from router.errors import ConfigError
from router.routing import EndpointSpec, ZoneSpec

__all__ = ["load_config", "parse_config", "load_zones", "quickstart_config"]


def load_config(path: str | os.PathLike[str]) -> RouterConfig:
    """Read, parse and validate the TOML configuration file at ``path``.

    Relative paths inside the file are relative to the file's directory.
    """
    p = os.fspath(path)
    return parse_config(read_text(p), path=p)


def parse_config(text: str, path: str | None = None, base_dir: str | None = None) -> RouterConfig:
    """Parse and validate configuration text.

    ``path`` is only used for error messages and ``RouterConfig.path``; relative paths in
    the text are resolved against ``base_dir``, by default the directory of ``path``, else
    the current directory.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    doc, where = load_toml(text, path)
    cfg = Builder(doc, where, os.path.abspath(os.path.expanduser(base_dir))).build()
    validate_at(cfg, where)
    return cfg


_TOML_ZONES_RE = re.compile(r"^[ \t]*\[\[[ \t]*(zones|endpoints)[ \t]*\]\]", re.M)


def _looks_like_toml(path: str, text: str) -> bool:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        return True
    if ext == ".conf":
        return False
    if _TOML_ZONES_RE.search(text):
        return True
    if re.search(r"^\s*(object|const)\s", text, re.M):
        return False
    try:
        return "zones" in tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def _load_zones_full(path: str, node_name: str | None
                     ) -> tuple[tuple[ZoneSpec, ...], tuple[EndpointSpec, ...], dict[str, float]]:
    text = read_text(path)
    if _looks_like_toml(path, text):
        doc, where = load_toml(text, path)
        builder = Builder(doc, where, os.path.dirname(os.path.abspath(path)))
        # only the topology part is used: the rest of a full config is checked by load_config
        zones = builder.zones()
        endpoints, durations = builder.endpoints()
        check_topology_at(zones, endpoints, None, where)
        return zones, endpoints, durations
    constants = {"NodeName": node_name} if node_name else None
    zc = parse_zones_conf(text, path=path, constants=constants)
    return zc.zones, zc.endpoints, dict(zc.log_durations)


def load_zones(path: str | os.PathLike[str], node_name: str | None = None
               ) -> tuple[tuple[ZoneSpec, ...], tuple[EndpointSpec, ...]]:
    """Zones and endpoints from our TOML (``[[zones]]``) or an Icinga ``zones.conf``.

    ``node_name`` is the value of ``NodeName`` (and the default of ``ZoneName``) for a
    zones.conf that refers to them without defining them.
    """
    zones, endpoints, _ = _load_zones_full(os.fspath(path), node_name)
    return zones, endpoints


def _listen_option(value: object, key: str, default_port: int) -> tuple[str, int] | None:
    if value is False or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, tuple):
        return value
    try:
        return parse_address(value, default_port, allow_port_zero=True)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(str(e), key=key) from None


def quickstart_config(*, node_name: str | None = None, data_dir: str | None = None,
                      zones_file: str | os.PathLike[str] | None = None,
                      listen: str | tuple[str, int] | bool | None = None,
                      status_listen: str | tuple[str, int] | bool | None = None,
                      base: RouterConfig | None = None,
                      accept_commands: bool | None = None,
                      accept_config: bool | None = None,
                      zones_dir: str | None = None) -> RouterConfig:
    """Build a configuration from ``router serve`` options.

    Each option that is given (not ``None``) overrides ``base`` (the ``--config`` file, if
    any). ``listen``/``status_listen`` take ``"host:port"``, a bare host, ``"none"`` or
    ``False`` (no listener), or a ``(host, port)`` tuple. ``zones_file`` is our TOML or an
    Icinga zones.conf. Without zones file and base the node is a standalone master: one zone
    named after the node, holding only the node's endpoint. TLS paths that were derived
    from the old node name/data_dir follow the new ones.
    """
    if base is None:
        if not node_name:
            raise ConfigError("a node name is required (--node-name NAME)", key="node.name")
        if not data_dir:
            raise ConfigError("a data directory is required (--data-dir DIR)",
                              key="node.data_dir")
    name = node_name.strip() if node_name else base.node.name  # type: ignore[union-attr]
    problem = check_name(name, "node")
    if problem:
        raise ConfigError(problem, key="node.name")
    ddir = (os.path.abspath(os.path.expanduser(data_dir)) if data_dir
            else base.node.data_dir)  # type: ignore[union-attr]
    node = NodeConfig(
        name=name, data_dir=ddir,
        icinga_version=base.node.icinga_version if base else DEFAULT_ICINGA_VERSION,
        accept_commands=(accept_commands if accept_commands is not None
                         else base.node.accept_commands if base else False),
        command_catalog=base.node.command_catalog if base else None,
        accept_config=(accept_config if accept_config is not None
                       else base.node.accept_config if base else False),
        zones_dir=(os.path.abspath(os.path.expanduser(zones_dir)) if zones_dir
                   else base.node.zones_dir if base else None))

    new_tls = TLSConfig.for_node(name, ddir)
    if base is None:
        tls = new_tls
    else:
        old = TLSConfig.for_node(base.node.name, base.node.data_dir)
        tls = TLSConfig(**{k: getattr(new_tls, k) if getattr(base.tls, k) == getattr(old, k)
                           else getattr(base.tls, k) for k in ("ca", "cert", "key")},
                        library=base.tls.library, crl_file=base.tls.crl_file)

    err_path = base.path if base else None
    if zones_file is not None:
        zpath = os.fspath(zones_file)
        zones, endpoints, durations = _load_zones_full(zpath, name)
        err_path = zpath
    elif base is not None:
        zones, endpoints, durations = base.zones, base.endpoints, dict(base.endpoint_log_duration)
    else:
        zones = (ZoneSpec(name=name, endpoints=(name,)),)
        endpoints = (EndpointSpec(name=name),)
        durations = {}

    listen_v = (_listen_option(listen, "listen", DEFAULT_LISTEN[1]) if listen is not None
                else base.listen if base else DEFAULT_LISTEN)
    status_v = (_listen_option(status_listen, "status_listen", DEFAULT_STATUS_LISTEN[1])
                if status_listen is not None
                else base.status_listen if base else DEFAULT_STATUS_LISTEN)

    kwargs: dict[str, Any] = {}
    if base is not None:
        kwargs = dict(limits=base.limits, timeouts=base.timeouts, objects=base.objects,
                      results=base.results, log_level=base.log_level, path=base.path,
                      checks=base.checks, pki=base.pki)
        kwargs["writers"] = base.writers
        kwargs["status"] = base.status
    cfg = RouterConfig(node=node, listen=listen_v, status_listen=status_v, tls=tls,
                       zones=tuple(zones), endpoints=tuple(endpoints),
                       endpoint_log_duration=durations, **kwargs)
    validate_at(cfg, Where(err_path))
    return cfg
