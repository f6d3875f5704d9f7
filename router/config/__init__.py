"""Configuration: the TOML model, its parser and validation, and the zones.conf import.

Everything the rest of the node needs is importable from here; the modules inside are the
package's own business. They are, lowest first (each imports only modules above it):
``model`` (the dataclasses), ``units`` (value parsers), ``emit`` (TOML output), ``source``
(reading files, lines of keys), ``builder`` (TOML to model), ``validate`` (semantic checks),
``zonesconf`` (Icinga zones.conf import) and ``load`` (the entry points).
"""

from __future__ import annotations

from router.config.emit import config_to_toml, topology_to_toml
from router.config.load import load_config, load_zones, parse_config, quickstart_config
from router.config.model import (
    DEFAULT_ICINGA_VERSION,
    DEFAULT_LISTEN,
    DEFAULT_LOG_DURATION,
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
    RouterConfig,
    Timeouts,
    TLSConfig,
    WRITER_TYPES,
    WriterSpec,
)
from router.config.units import format_address, parse_address, parse_duration, parse_size
from router.config.validate import (MIN_ADMIN_TOKEN_LENGTH, advisories, check_topology,
                                    validate)
from router.config.zonesconf import (
    DEFAULT_ICINGA_DATA_DIR,
    ZonesConf,
    parse_zones_conf,
    load_zones_conf,
    zones_conf_to_toml,
)

__all__ = [
    "advisories",
    "MIN_ADMIN_TOKEN_LENGTH",
    "CheckSpec",
    "check_topology",
    "config_to_toml",
    "DEFAULT_ICINGA_DATA_DIR",
    "DEFAULT_ICINGA_VERSION",
    "DEFAULT_LISTEN",
    "DEFAULT_LOG_DURATION",
    "DEFAULT_PORT",
    "DEFAULT_STATUS_LISTEN",
    "format_address",
    "FrozenMap",
    "Limits",
    "load_config",
    "load_zones",
    "load_zones_conf",
    "LOG_LEVELS",
    "NodeConfig",
    "ObjectsConfig",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_zones_conf",
    "quickstart_config",
    "RESULTS_MODES",
    "RouterConfig",
    "Timeouts",
    "TLS_LIBRARIES",
    "TLSConfig",
    "topology_to_toml",
    "UNKNOWN_MODES",
    "validate",
    "WRITER_TYPES",
    "WriterSpec",
    "zones_conf_to_toml",
    "ZonesConf",
]
