"""Router configuration: the TOML file, its validation, quickstart options and TOML output.

The configuration is one TOML file (``docs/configuration.md`` is the reference for every
key). :func:`load_config` / :func:`parse_config` turn it into a frozen
:class:`RouterConfig`; every problem raises :class:`router.errors.ConfigError` carrying the
file, the 1-based line and the dotted key path (``zones[1].parent``, 0-based indices), so
``router config check`` can print one precise line::

    router.toml:14: [zones[1].parent] zone 'mastr' is not defined (did you mean 'master'?)

Line numbers come from :class:`_TomlLocator`, a small structural scanner that walks the TOML
text once (``tomllib`` keeps no positions) and records the line of every key, table header,
array-of-tables entry and array item.

The zone tree can also come from an Icinga ``zones.conf`` (:mod:`router.zonesconf`):
:func:`load_zones` accepts either format, and :func:`quickstart_config` builds a whole
configuration from the ``router serve`` command-line options.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router.errors import ConfigError
from router.features.scheduler import CheckSpec
from router.routing import EndpointSpec, ZoneSpec

__all__ = [
    "DEFAULT_PORT", "DEFAULT_LISTEN", "DEFAULT_STATUS_LISTEN", "DEFAULT_LOG_DURATION",
    "LOG_LEVELS", "RESULTS_MODES", "UNKNOWN_MODES",
    "FrozenMap", "NodeConfig", "TLSConfig", "Limits", "Timeouts", "ObjectsConfig",
    "RouterConfig",
    "load_config", "parse_config", "validate", "load_zones", "quickstart_config",
    "config_to_toml", "topology_to_toml", "check_topology",
    "parse_address", "format_address", "parse_duration", "parse_size",
]

DEFAULT_PORT = 5665
"""Icinga's cluster port, used when an address has no port."""
DEFAULT_LISTEN = ("127.0.0.1", 5665)
DEFAULT_STATUS_LISTEN = ("127.0.0.1", 9665)
DEFAULT_LOG_DURATION = 86400.0
"""Icinga's default ``Endpoint.log_duration`` (1 day), in seconds."""
DEFAULT_ICINGA_VERSION = 21306
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RESULTS_MODES = ("auto", "on", "off")
UNKNOWN_MODES = ("learn", "reject")

_KiB = 1024
_MiB = 1024 * 1024

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """An immutable, hashable, picklable ``str -> value`` mapping (insertion ordered)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._data: dict[str, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._data,))


# --------------------------------------------------------------------------------------------
# The configuration model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this node is (``[node]``)."""

    name: str
    """Endpoint name of this node; also the CN of its certificate."""
    data_dir: str
    """State directory (absolute). Certificates default to ``DATA_DIR/certs/`` (Icinga's layout)."""
    icinga_version: int = DEFAULT_ICINGA_VERSION
    """Version announced in ``icinga::Hello`` (major*10000 + minor*100 + patch)."""
    accept_commands: bool = False
    """Whether this node accepts commands (``event::ExecuteCommand``) from its parents."""
    command_catalog: str | None = None
    """Extra check command definitions (TOML, absolute path) merged over the bundled
    catalog: new commands are added, ones with a bundled name replace it."""


#: Values of ``[tls] library`` (see ``router.tlslib``).
TLS_LIBRARIES = ("bundled", "system")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Our certificate, key and the cluster CA (``[tls]``), as absolute paths."""

    ca: str
    """CA certificate (PEM) that every peer certificate must chain to."""
    cert: str
    """Our certificate (PEM); its CN must equal ``node.name``."""
    key: str
    """Our private key (PEM)."""
    library: str = "bundled"
    """TLS library of the node's sessions (``router.tlslib``): ``bundled`` (pyOpenSSL on
    the OpenSSL inside the cryptography wheel; cheaper handshakes) or ``system`` (Python's
    ``ssl`` on the distribution's OpenSSL; cheaper per message). See
    docs/configuration.md."""

    @classmethod
    def for_node(cls, name: str, data_dir: str) -> TLSConfig:
        """Icinga's layout: ``DATA_DIR/certs/ca.crt``, ``NAME.crt``, ``NAME.key``."""
        certs = os.path.join(data_dir, "certs")
        return cls(ca=os.path.join(certs, "ca.crt"), cert=os.path.join(certs, f"{name}.crt"),
                   key=os.path.join(certs, f"{name}.key"))


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits (``[limits]``). Sizes in bytes, all strictly positive (but
    ``handshake_threads``, where 0 has a meaning)."""

    max_message_size_anonymous: int = 1 * _MiB
    """Largest message accepted from a peer that is not a known endpoint (Icinga: 1 MiB)."""
    max_message_size_child: int = 16 * _MiB
    """Largest message accepted from an endpoint of a child zone."""
    max_message_size_peer: int = 128 * _MiB
    """Largest message accepted from a parent or an HA peer of our own zone."""
    max_json_depth: int = 128
    """Deepest JSON nesting accepted in a message."""
    send_queue_high_bytes: int = 8 * _MiB
    """A peer's send queue is congested above this many bytes (sources are paused)."""
    send_queue_low_bytes: int = 2 * _MiB
    """Paused sources resume once the queue is below this many bytes."""
    send_queue_high_messages: int = 20000
    """A peer's send queue is congested above this many messages."""
    send_queue_low_messages: int = 5000
    """Paused sources resume once the queue is below this many messages."""
    max_connections: int = 20000
    """Most simultaneous connections (authenticated and anonymous)."""
    max_anonymous_clients: int = 100
    """Most simultaneous connections from peers that are not known endpoints."""
    dial_concurrency: int = 64
    """Most outgoing connection attempts in flight at once."""
    handshake_threads: int = 0
    """Threads that run the TLS handshake computations (OpenSSL releases the GIL there),
    so a reconnect storm can use spare cores; 0 (default) runs them in the event-loop
    thread. Off by default: on a 2-core machine with the load generator on the other core
    it measured no faster and cost 10-20 % more CPU per handshake (perf/RESULTS.md)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timers (``[timeouts]``), in seconds, all strictly positive."""

    handshake: float = 10.0
    """TLS handshake deadline (Icinga: 10 s)."""
    connect: float = 15.0
    """TCP connect deadline for outgoing connections; also the first-byte deadline."""
    heartbeat_interval: float = 20.0
    """Interval between ``event::Heartbeat`` messages we send (Icinga: 20 s)."""
    liveness: float = 60.0
    """A peer that sends nothing for this long is disconnected (Icinga: 60 s)."""
    anonymous: float = 10.0
    """An unauthenticated peer is disconnected this long after it connected (Icinga: 10 s)."""
    enrollment: float = 60.0
    """... unless it sent ``pki::RequestCertificate``: then it may stay this long."""
    reconnect_min: float = 1.0
    """First reconnect delay; it doubles (with full jitter) after each failure."""
    reconnect_max: float = 60.0
    """Upper bound of the reconnect delay."""
    slow_consumer: float = 60.0
    """A peer congested with no write progress for this long is disconnected."""
    drain: float = 10.0
    """On shutdown, how long to wait for send queues to drain."""
    ha_cold_start: float = 30.0
    """Alone in an HA zone this soon after start, run no scheduled checks: the peer may be
    running them (Icinga: 30 s)."""


@dataclass(frozen=True, slots=True)
class ObjectsConfig:
    """Which zone each host object belongs to (``[objects]``)."""

    unknown: str = "learn"
    """``learn``: a host first reported by a child zone is placed in that zone;
    ``reject``: messages about hosts not listed in ``hosts`` are refused."""
    hosts: Mapping[str, str] = field(default_factory=FrozenMap)
    """Host name -> zone name (``[objects.hosts]``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.hosts, FrozenMap):
            object.__setattr__(self, "hosts", FrozenMap(self.hosts))


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """The whole, validated configuration of one router node."""

    node: NodeConfig
    """This node (``[node]``)."""
    listen: tuple[str, int] | None
    """Cluster listener (host, port); ``None`` for an outbound-only node."""
    status_listen: tuple[str, int] | None
    """Plain-HTTP status/metrics listener (host, port); ``None`` to disable it."""
    tls: TLSConfig
    """Certificate, key and CA (absolute paths)."""
    zones: tuple[ZoneSpec, ...] = ()
    """The zone tree, in file order."""
    endpoints: tuple[EndpointSpec, ...] = ()
    """Every known endpoint, in file order."""
    limits: Limits = field(default_factory=Limits)
    """Resource limits."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """Timers."""
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    """Host-to-zone assignment."""
    results: str = "auto"
    """Keep the latest check result per host/service: ``on``, ``off`` or ``auto`` (only
    when the node's zone has no parent, i.e. on a top-level master)."""
    log_level: str = "info"
    """One of ``debug``, ``info``, ``warning``, ``error``, ``critical``."""
    path: str | None = None
    """The file this configuration came from, if any."""
    endpoint_log_duration: Mapping[str, float] = field(default_factory=FrozenMap)
    """Replay-log retention per endpoint in seconds (Icinga ``log_duration``); every endpoint
    has an entry (default 86400, 0 disables the replay log for it)."""
    checks: tuple[CheckSpec, ...] = ()
    """Checks this node schedules itself (``[[checks]]``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.zones, tuple):
            object.__setattr__(self, "zones", tuple(self.zones))
        if not isinstance(self.endpoints, tuple):
            object.__setattr__(self, "endpoints", tuple(self.endpoints))
        given = dict(self.endpoint_log_duration)
        full = {e.name: given.pop(e.name, DEFAULT_LOG_DURATION) for e in self.endpoints}
        full.update(given)              # unknown names are kept so that validate() reports them
        object.__setattr__(self, "endpoint_log_duration", FrozenMap(full))

    def log_duration(self, endpoint: str) -> float:
        """Replay-log retention for ``endpoint`` in seconds."""
        return self.endpoint_log_duration.get(endpoint, DEFAULT_LOG_DURATION)

    def zone_of(self, endpoint: str) -> ZoneSpec | None:
        """The zone that lists ``endpoint``, or ``None``."""
        for z in self.zones:
            if endpoint in z.endpoints:
                return z
        return None

    def keeps_results(self) -> bool:
        """``results`` resolved: ``auto`` means on only when our zone has no parent."""
        if self.results != "auto":
            return self.results == "on"
        zone = self.zone_of(self.node.name)
        return zone is not None and zone.parent is None


# --------------------------------------------------------------------------------------------
# Small value parsers (public: the CLI and zonesconf use them too)
# --------------------------------------------------------------------------------------------

_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
               "kib": _KiB, "mib": _MiB, "gib": 1024**3}


def _check_host(host: str, original: str) -> None:
    if not host:
        raise ValueError(f"missing host in {original!r} "
                         "(use 0.0.0.0 or [::] for every address)")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    elif not _HOST_RE.match(host):
        raise ValueError(f"{host!r} is not a valid host name or IP address")


def _parse_port(text: str, original: str, allow_zero: bool) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"invalid port {text!r} in {original!r}")
    port = int(text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise ValueError(f"port {port} out of range in {original!r} (1-65535)")
    return port


def parse_address(text: str, default_port: int = DEFAULT_PORT, *,
                  allow_port_zero: bool = False) -> tuple[str, int]:
    """Parse ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` into ``(host, port)``.

    The host comes back without brackets. A bare IPv6 address is refused because its
    last group could be read as a port. Raises :class:`ValueError` with a short reason.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a 'host:port' string, got {_type_name(text)}")
    s = text.strip()
    if not s:
        raise ValueError("empty address")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {text!r}")
        host, rest = s[1:end], s[end + 1:]
        if ":" not in host:
            raise ValueError(f"only IPv6 addresses go in brackets: {text!r}")
        _check_host(host, text)
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
        return host, _parse_port(rest[1:], text, allow_port_zero)
    if s.count(":") > 1:
        raise ValueError(f"IPv6 addresses must be written in brackets, e.g. '[{s}]' "
                         f"or '[::1]:{default_port}'")
    host, sep, port_text = s.partition(":")
    _check_host(host, text)
    if not sep:
        return host, default_port
    return host, _parse_port(port_text, text, allow_port_zero)


def format_address(host: str, port: int) -> str:
    """Inverse of :func:`parse_address`: brackets around IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string with an Icinga-style suffix (ms, s, m, h, d)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {_type_name(value)}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        raise ValueError(f"invalid duration {value!r} (examples: 30, 2.5, \"500ms\", "
                         "\"45s\", \"5m\", \"12h\", \"1d\")")
    raise ValueError(f"expected a duration, got {_type_name(value)}")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"16MiB"``, ``"512 KiB"``, ``"2MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {_type_name(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        raise ValueError(f"invalid size {value!r} (examples: 1048576, \"512KiB\", \"16MiB\")")
    raise ValueError(f"expected an integer, got {_type_name(value)}")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _suggest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_name(name: str, what: str) -> str | None:
    """Problem with an object name, or None. Icinga forbids '!' in object names."""
    if not name:
        return f"{what} name must not be empty"
    if "!" in name:
        return f"{what} name {name!r} must not contain '!'"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"{what} name {name!r} must not contain control characters"
    return None


# --------------------------------------------------------------------------------------------
# Line locator
# --------------------------------------------------------------------------------------------

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_INDEX_SUFFIX = re.compile(r"\[\d+\]$")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _parent_key(key: str) -> str:
    m = _INDEX_SUFFIX.search(key)
    if m:
        return key[:m.start()]
    dot = key.rfind(".")
    return key[:dot] if dot >= 0 else ""


class _ScanError(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _TomlLocator:
    """Records the 1-based line of every key path in a TOML text.

    Paths: ``node.name``, ``zones[1]`` (the ``[[zones]]`` header), ``zones[1].endpoints[0]``
    (an array item), ``objects.hosts`` (a table header). The scanner assumes valid TOML;
    on invalid input it stops with :class:`_ScanError` at the line where it got lost,
    which helps to place some ``tomllib`` errors reported "at end of document".
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line_no = 1
        self.lines: dict[str, int] = {}
        self.defined: dict[str, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []      # (key, first line, line)
        self.aot: dict[str, int] = {}
        self.error_line: int | None = None
        try:
            self._scan()
        except _ScanError as e:
            self.error_line = e.line
        except (IndexError, ValueError):          # pragma: no cover - defensive
            self.error_line = self.line_no

    # -- helpers --------------------------------------------------------------------------

    def _peek(self, n: int = 0) -> str:
        i = self.pos + n
        return self.text[i] if i < len(self.text) else ""

    def _record(self, key: str, line: int) -> None:
        self.lines.setdefault(key, line)

    def _define(self, key: str, line: int) -> None:
        if key in self.defined:
            self.duplicates.append((key, self.defined[key], line))
        else:
            self.defined[key] = line
        self._record(key, line)

    def _skip_ws(self) -> None:
        while self._peek() in (" ", "\t"):
            self.pos += 1

    def _skip_ws_nl_comments(self) -> None:
        while True:
            c = self._peek()
            if c in (" ", "\t", "\r"):
                self.pos += 1
            elif c == "\n":
                self.pos += 1
                self.line_no += 1
            elif c == "#":
                while self._peek() not in ("\n", ""):
                    self.pos += 1
            else:
                return

    def _skip_line_end(self) -> None:
        self._skip_ws()
        if self._peek() == "#":
            while self._peek() not in ("\n", ""):
                self.pos += 1
        if self._peek() == "\r":
            self.pos += 1
        if self._peek() not in ("\n", ""):
            raise _ScanError(self.line_no)

    # -- scanning -------------------------------------------------------------------------

    def _scan(self) -> None:
        prefix = ""
        while True:
            self._skip_ws_nl_comments()
            c = self._peek()
            if not c:
                return
            line = self.line_no
            if c == "[":
                aot = self._peek(1) == "["
                self.pos += 2 if aot else 1
                self._skip_ws()
                parts = self._read_key()
                self._skip_ws()
                close = "]]" if aot else "]"
                if self.text[self.pos:self.pos + len(close)] != close:
                    raise _ScanError(line)
                self.pos += len(close)
                prefix = self._resolve_header(parts, aot, line)
                self._skip_line_end()
            else:
                parts = self._read_key()
                self._skip_ws()
                if self._peek() != "=":
                    raise _ScanError(line)
                self.pos += 1
                self._skip_ws()
                path = prefix
                for part in parts[:-1]:
                    path = _join(path, part)
                    self._record(path, line)
                path = _join(path, parts[-1])
                self._define(path, line)
                self._read_value(path)
                self._skip_line_end()

    def _resolve_header(self, parts: list[str], aot: bool, line: int) -> str:
        path = ""
        for k, part in enumerate(parts):
            path = _join(path, part)
            if aot and k == len(parts) - 1:
                idx = self.aot.get(path, 0)
                self.aot[path] = idx + 1
                self._record(path, line)
                path = f"{path}[{idx}]"
                self._record(path, line)
            else:
                if path in self.aot:
                    path = f"{path}[{self.aot[path] - 1}]"
                self._record(path, line)
        if not aot:
            self._define(path, line)
        return path

    def _read_key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                parts.append(self._read_basic_string())
            elif c == "'":
                end = self.text.find("'", self.pos + 1)
                nl = self.text.find("\n", self.pos + 1)
                if end < 0 or (0 <= nl < end):
                    raise _ScanError(self.line_no)
                parts.append(self.text[self.pos + 1:end])
                self.pos = end + 1
            else:
                start = self.pos
                while self._peek() and self._peek() in _BARE_KEY_CHARS:
                    self.pos += 1
                if self.pos == start:
                    raise _ScanError(self.line_no)
                parts.append(self.text[start:self.pos])
            self._skip_ws()
            if self._peek() != ".":
                return parts
            self.pos += 1

    def _read_basic_string(self) -> str:
        start = self.pos
        self.pos += 1
        while True:
            c = self._peek()
            if c in ("", "\n"):
                raise _ScanError(self.line_no)
            if c == "\\":
                self.pos += 2
                continue
            self.pos += 1
            if c == '"':
                raw = self.text[start:self.pos]
                try:
                    return tomllib.loads(f"k = {raw}")["k"]
                except tomllib.TOMLDecodeError:
                    return raw[1:-1]

    def _read_multiline(self, quote: str) -> None:
        line = self.line_no
        self.pos += 3
        delim = quote * 3
        while True:
            c = self._peek()
            if not c:
                raise _ScanError(line)
            if c == "\n":
                self.line_no += 1
                self.pos += 1
            elif c == "\\" and quote == '"':
                if self._peek(1) == "\n":
                    self.line_no += 1
                self.pos += 2
            elif self.text.startswith(delim, self.pos):
                self.pos += 3
                for _ in range(2):              # up to two quotes may precede the delimiter
                    if self._peek() == quote:
                        self.pos += 1
                return
            else:
                self.pos += 1

    def _read_value(self, path: str) -> None:
        c = self._peek()
        if c == '"':
            if self.text.startswith('"""', self.pos):
                self._read_multiline('"')
            else:
                self._read_basic_string()
        elif c == "'":
            if self.text.startswith("'''", self.pos):
                self._read_multiline("'")
            else:
                self._read_key()                # a literal string scans like a quoted key
        elif c == "[":
            self.pos += 1
            idx = 0
            while True:
                self._skip_ws_nl_comments()
                c = self._peek()
                if c == "]":
                    self.pos += 1
                    return
                if not c:
                    raise _ScanError(self.line_no)
                item = f"{path}[{idx}]"
                self._record(item, self.line_no)
                self._read_value(item)
                idx += 1
                self._skip_ws_nl_comments()
                if self._peek() == ",":
                    self.pos += 1
                elif self._peek() != "]":
                    raise _ScanError(self.line_no)
        elif c == "{":
            self.pos += 1
            while True:
                self._skip_ws()
                c = self._peek()
                if c == "}":
                    self.pos += 1
                    return
                line = self.line_no
                parts = self._read_key()
                self._skip_ws()
                if self._peek() != "=":
                    raise _ScanError(line)
                self.pos += 1
                self._skip_ws()
                sub = path
                for part in parts:
                    sub = _join(sub, part)
                    self._record(sub, line)
                self._read_value(sub)
                self._skip_ws()
                if self._peek() == ",":
                    self.pos += 1
                elif self._peek() != "}":
                    raise _ScanError(line)
        else:
            start = self.pos
            while self._peek() and self._peek() not in ",]}#\n":
                self.pos += 1
            if self.pos == start:
                raise _ScanError(self.line_no)


class _Where:
    """Turns a key path into a ConfigError with the right file and line."""

    def __init__(self, path: str | None, lines: Mapping[str, int] | None = None,
                 dialect: str = "toml",
                 locate: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.path = path
        self._lines = lines if lines is not None or locate is not None else {}
        #: Computes ``lines`` when an error first needs one: scanning a 5 000-agent file
        #: for key lines took half a second of every start.
        self._locate = locate
        self.dialect = dialect          # "toml" or "zones.conf": changes the wording of hints

    @property
    def lines(self) -> Mapping[str, int]:
        if self._lines is None:
            self._lines = self._locate() if self._locate is not None else {}
            self._locate = None
        return self._lines

    @lines.setter
    def lines(self, value: Mapping[str, int]) -> None:
        self._lines, self._locate = value, None

    def define_endpoint_hint(self, name: str) -> str:
        if self.dialect == "zones.conf":
            return f"add an object Endpoint {_toml_str(name)}"
        return "add an [[endpoints]] entry for it"

    def line(self, key: str | None) -> int | None:
        k = key or ""
        while k:
            if k in self.lines:
                return self.lines[k]
            k = _parent_key(k)
        return None

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(message, path=self.path, line=self.line(key), key=key or None)

    def first_line_key(self, *keys: str) -> str:
        """The first of ``keys`` that appears in the file (else the first one)."""
        for k in keys:
            if k in self.lines:
                return k
        return keys[0]


def _load_toml(text: str, path: str | None) -> tuple[dict[str, Any], _Where]:
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_syntax_error(e, text, path) from None
    return doc, _Where(path, locate=lambda: _TomlLocator(text).lines)


def _toml_syntax_error(e: tomllib.TOMLDecodeError, text: str, path: str | None) -> ConfigError:
    msg = str(e)
    line: int | None = None
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        line = int(m.group(1))
        msg = f"{msg[:m.start()]} (column {m.group(2)})"
    else:
        m = re.search(r"\s*\(at end of document\)$", msg)
        if m:
            msg = f"{msg[:m.start()]} (at end of file)"
    loc = _TomlLocator(text)
    if ("overwrite" in msg or "twice" in msg) and loc.duplicates:
        key, first, dup = loc.duplicates[0]
        return ConfigError(f"TOML syntax error: '{key}' is defined twice (first at line "
                           f"{first})", path=path, line=dup, key=key)
    if line is None:
        line = loc.error_line if loc.error_line is not None else max(1, text.count("\n") + 1)
    return ConfigError(f"TOML syntax error: {msg}", path=path, line=line)


# --------------------------------------------------------------------------------------------
# Building the configuration from the parsed TOML document
# --------------------------------------------------------------------------------------------

_TOP_KEYS = ("node", "listen", "status_listen", "log_level", "results", "tls", "zones",
             "endpoints", "limits", "timeouts", "objects", "checks")
_TOP_SCALARS = ("listen", "status_listen", "log_level", "results")
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "node": ("name", "data_dir", "icinga_version", "accept_commands", "command_catalog"),
    "tls": ("ca", "cert", "key", "library"),
    "zones": ("name", "endpoints", "parent", "global"),
    "endpoints": ("name", "addresses", "host", "port", "log_duration"),
    "limits": tuple(f.name for f in dataclasses.fields(Limits)),
    "timeouts": tuple(f.name for f in dataclasses.fields(Timeouts)),
    "objects": ("unknown", "hosts"),
    "checks": ("host", "service", "command", "macros", "interval", "retry_interval",
               "max_check_attempts", "command_endpoint", "zone"),
}
_SIZE_LIMITS = frozenset({"max_message_size_anonymous", "max_message_size_child",
                          "max_message_size_peer", "send_queue_high_bytes",
                          "send_queue_low_bytes"})


def _section_label(section: str) -> str:
    if not section:
        return "at the top level"
    if section in ("zones", "endpoints", "checks"):
        return f"in [[{section}]]"
    return f"in [{section}]"


class _Builder:
    """Checks keys and types of the parsed document and builds the dataclasses."""

    def __init__(self, doc: dict[str, Any], where: _Where, base_dir: str) -> None:
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
                hint = _suggest(key, allowed)
                if not hint and len(owners) == 1:
                    hint = f" (it belongs {_section_label(owners[0])})"
            raise self.err(f"unknown key '{key}' {where}{hint}", _join(prefix, key))

    def table(self, value: Any, key: str, header: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(f"expected a table ({header}), got {_type_name(value)}", key)
        return value

    def string(self, value: Any, key: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.err(f"expected a string, got {_type_name(value)}", key)
        if not allow_empty and not value.strip():
            raise self.err("must not be empty", key)
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(f"expected true or false, got {_type_name(value)}", key)
        return value

    def integer(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(f"expected an integer, got {_type_name(value)}", key)
        return value

    def string_list(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.err(f"expected an array of strings, got {_type_name(value)}", key)
        return [self.string(v, f"{key}[{i}]") for i, v in enumerate(value)]

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, key).strip().lower()
        if text not in choices:
            options = ", ".join(f"'{c}'" for c in choices)
            raise self.err(f"invalid value {value!r}: expected one of {options}"
                           f"{_suggest(text, choices)}", key)
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
                           f"{_type_name(value)}", key)
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
            path=self.where.path, endpoint_log_duration=durations, checks=self.checks())

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
        problem = _check_name(name, "node")
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
        return NodeConfig(name=name, data_dir=data_dir, icinga_version=version,
                          accept_commands=accept, command_catalog=catalog)

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
        return TLSConfig(**values, library=library)

    def zones(self) -> tuple[ZoneSpec, ...]:
        raw = self.doc.get("zones", [])
        if not isinstance(raw, list):
            raise self.err(f"expected [[zones]] entries, got {_type_name(raw)}", "zones")
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
            raise self.err(f"expected [[endpoints]] entries, got {_type_name(raw)}",
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
                        _check_host(host, host)
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
            raise self.err(f"expected a port number, got {_type_name(value)}", key)
        text = str(value).strip()
        try:
            return _parse_port(text, text, False)
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

    def objects(self) -> ObjectsConfig:
        t = self.table(self.doc.get("objects"), "objects", "[objects]")
        self.check_keys(t, "objects", "objects")
        unknown = "learn"
        if "unknown" in t:
            unknown = self.choice(t["unknown"], "objects.unknown", UNKNOWN_MODES)
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
                             hosts=FrozenMap((h, z.strip()) for h, z in hosts.items()))


# --------------------------------------------------------------------------------------------
# Semantic validation
# --------------------------------------------------------------------------------------------


def check_topology(zones: Iterable[ZoneSpec], endpoints: Iterable[EndpointSpec], *,
                   node_name: str | None = None, path: str | None = None,
                   lines: Mapping[str, int] | None = None) -> None:
    """Validate a zone tree the way Icinga does; raise :class:`ConfigError`.

    ``lines`` maps key paths (``zones[1].parent``, ``endpoints[0].name``...) to line numbers
    of ``path``, so the error points at the offending line. With ``node_name`` the node
    must be an endpoint of exactly one zone (error key ``node.name``).
    """
    _check_topology(tuple(zones), tuple(endpoints), node_name, _Where(path, lines))


def _unique_names(items: tuple[ZoneSpec, ...] | tuple[EndpointSpec, ...], kind: str,
                  section: str, where: _Where) -> dict[str, int]:
    """Check each item's name and that none repeats; name -> index."""
    index: dict[str, int] = {}
    for i, item in enumerate(items):
        key = f"{section}[{i}].name"
        problem = _check_name(item.name, kind) if isinstance(item.name, str) else \
            f"{kind} name must be a string, got {_type_name(item.name)}"
        if problem:
            raise where.error(problem, key)
        if item.name in index:
            first = where.line(f"{section}[{index[item.name]}]")
            at = f" (first at line {first})" if first else ""
            raise where.error(f"{kind} '{item.name}' is defined twice{at}", key)
        index[item.name] = i
    return index


def _check_topology(zones: tuple[ZoneSpec, ...], endpoints: tuple[EndpointSpec, ...],
                    node_name: str | None, where: _Where) -> None:
    ep_index = _unique_names(endpoints, "endpoint", "endpoints", where)
    for i, ep in enumerate(endpoints):
        for k, addr in enumerate(ep.addresses):
            akey = f"endpoints[{i}].addresses[{k}]"
            if (not isinstance(addr, tuple) or len(addr) != 2 or not isinstance(addr[0], str)
                    or isinstance(addr[1], bool) or not isinstance(addr[1], int)):
                raise where.error(f"address must be a (host, port) pair, got {addr!r}", akey)
            if not 0 < addr[1] < 65536:
                raise where.error(f"port {addr[1]} out of range (1-65535)", akey)
            try:
                _check_host(addr[0], addr[0])
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
                hint = _suggest(ep, ep_index) or f" ({where.define_endpoint_hint(ep)})"
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
                                  f"{_suggest(z.parent, zone_index)}", key)
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
            hint = _suggest(node_name, ep_index)
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
    _validate(cfg, _Where(cfg.path))


def _check_checks(cfg: RouterConfig, where: _Where) -> None:
    """A check's zone must exist; its command_endpoint must be us, a peer of our zone or an
    endpoint of a direct child zone (Icinga sends ExecuteCommand only to those)."""
    zone_of = {e: z.name for z in cfg.zones for e in z.endpoints}
    local = zone_of.get(cfg.node.name)
    children = {z.name for z in cfg.zones if z.parent == local and not z.global_}
    names = [z.name for z in cfg.zones]
    seen: set[str] = set()
    for i, check in enumerate(cfg.checks):
        prefix = f"checks[{i}]"
        if check.name in seen:
            raise where.error(f"check '{check.name}' is defined twice", f"{prefix}.host")
        seen.add(check.name)
        if check.zone is not None and check.zone not in names:
            raise where.error(f"zone '{check.zone}' is not defined{_suggest(check.zone, names)}",
                              f"{prefix}.zone")
        ep = check.command_endpoint
        if ep is not None and ep != cfg.node.name:
            if ep not in zone_of:
                raise where.error(f"endpoint '{ep}' is not in any zone"
                                  f"{_suggest(ep, list(zone_of))}", f"{prefix}.command_endpoint")
            if zone_of[ep] != local and zone_of[ep] not in children:
                raise where.error(f"command_endpoint '{ep}' must be in our zone or a direct "
                                  f"child zone (it is in '{zone_of[ep]}')",
                                  f"{prefix}.command_endpoint")


def _validate(cfg: RouterConfig, where: _Where) -> None:
    node = cfg.node
    if not isinstance(node.name, str) or _check_name(node.name, "node"):
        raise where.error(_check_name(node.name, "node") if isinstance(node.name, str)
                          else "node name must be a string", "node.name")
    if not isinstance(node.data_dir, str) or not node.data_dir:
        raise where.error("data_dir must not be empty", "node.data_dir")
    if (isinstance(node.icinga_version, bool) or not isinstance(node.icinga_version, int)
            or node.icinga_version <= 0):
        raise where.error(f"must be a positive integer, got {node.icinga_version!r}",
                          "node.icinga_version")

    for key, addr in (("listen", cfg.listen), ("status_listen", cfg.status_listen)):
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
                                ("objects.unknown", cfg.objects.unknown, UNKNOWN_MODES)):
        if value not in choices:
            options = ", ".join(f"'{c}'" for c in choices)
            raise where.error(f"invalid value {value!r}: expected one of {options}", key)

    for f in dataclasses.fields(Limits):
        value = getattr(cfg.limits, f.name)
        if f.name == "handshake_threads":
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

    _check_topology(cfg.zones, cfg.endpoints, node.name, where)

    zone_names = [z.name for z in cfg.zones]
    for host, zone in cfg.objects.hosts.items():
        key = f"objects.hosts.{host}"
        if not isinstance(host, str) or not host:
            raise where.error("host name must not be empty", key)
        if zone not in zone_names:
            raise where.error(f"zone '{zone}' is not defined{_suggest(zone, zone_names)}", key)

    _check_checks(cfg, where)

    ep_names = {e.name: i for i, e in enumerate(cfg.endpoints)}
    for name, seconds in cfg.endpoint_log_duration.items():
        key = f"endpoints[{ep_names[name]}].log_duration" if name in ep_names else \
            "endpoints"
        if name not in ep_names:
            raise where.error(f"log_duration given for unknown endpoint '{name}'", key)
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or not math.isfinite(seconds) or seconds < 0):
            raise where.error(f"must be zero or a positive number of seconds, got {seconds!r}",
                              key)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", path=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"file is not UTF-8 text ({e.reason} at byte {e.start})",
                          path=path) from None


def load_config(path: str | os.PathLike[str]) -> RouterConfig:
    """Read, parse and validate the TOML configuration file at ``path``.

    Relative paths inside the file are relative to the file's directory.
    """
    p = os.fspath(path)
    return parse_config(_read_text(p), path=p)


def parse_config(text: str, path: str | None = None, base_dir: str | None = None) -> RouterConfig:
    """Parse and validate configuration text.

    ``path`` is only used for error messages and ``RouterConfig.path``; relative paths in
    the text are resolved against ``base_dir``, by default the directory of ``path``, else
    the current directory.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    doc, where = _load_toml(text, path)
    cfg = _Builder(doc, where, os.path.abspath(os.path.expanduser(base_dir))).build()
    _validate(cfg, where)
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
    text = _read_text(path)
    if _looks_like_toml(path, text):
        doc, where = _load_toml(text, path)
        builder = _Builder(doc, where, os.path.dirname(os.path.abspath(path)))
        # only the topology part is used: the rest of a full config is checked by load_config
        zones = builder.zones()
        endpoints, durations = builder.endpoints()
        _check_topology(zones, endpoints, None, where)
        return zones, endpoints, durations
    from router.config.zonesconf import parse_zones_conf

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
        return value  # type: ignore[return-value]
    try:
        return parse_address(value, default_port, allow_port_zero=True)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(str(e), key=key) from None


def quickstart_config(*, node_name: str | None = None, data_dir: str | None = None,
                      zones_file: str | os.PathLike[str] | None = None,
                      listen: str | tuple[str, int] | bool | None = None,
                      status_listen: str | tuple[str, int] | bool | None = None,
                      base: RouterConfig | None = None,
                      accept_commands: bool | None = None) -> RouterConfig:
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
    problem = _check_name(name, "node")
    if problem:
        raise ConfigError(problem, key="node.name")
    ddir = (os.path.abspath(os.path.expanduser(data_dir)) if data_dir
            else base.node.data_dir)  # type: ignore[union-attr]
    node = NodeConfig(
        name=name, data_dir=ddir,
        icinga_version=base.node.icinga_version if base else DEFAULT_ICINGA_VERSION,
        accept_commands=(accept_commands if accept_commands is not None
                         else base.node.accept_commands if base else False))

    new_tls = TLSConfig.for_node(name, ddir)
    if base is None:
        tls = new_tls
    else:
        old = TLSConfig.for_node(base.node.name, base.node.data_dir)
        tls = TLSConfig(**{k: getattr(new_tls, k) if getattr(base.tls, k) == getattr(old, k)
                           else getattr(base.tls, k) for k in ("ca", "cert", "key")},
                        library=base.tls.library)

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
                      checks=base.checks)
    cfg = RouterConfig(node=node, listen=listen_v, status_listen=status_v, tls=tls,
                       zones=tuple(zones), endpoints=tuple(endpoints),
                       endpoint_log_duration=durations, **kwargs)
    _validate(cfg, _Where(err_path))
    return cfg


# --------------------------------------------------------------------------------------------
# TOML output
# --------------------------------------------------------------------------------------------

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_str(s: str) -> str:
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
    return key if _BARE_KEY_RE.match(key) else _toml_str(key)


def _toml_num(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def topology_to_toml(zones: Iterable[ZoneSpec], endpoints: Iterable[EndpointSpec],
                     log_durations: Mapping[str, float] | None = None) -> str:
    """``[[zones]]`` and ``[[endpoints]]`` tables; ``log_duration`` only when not 1 day."""
    out: list[str] = []
    for z in zones:
        out.append("[[zones]]")
        out.append(f"name = {_toml_str(z.name)}")
        if z.endpoints:
            out.append(f"endpoints = {_toml_list(z.endpoints)}")
        if z.parent is not None:
            out.append(f"parent = {_toml_str(z.parent)}")
        if z.global_:
            out.append("global = true")
        out.append("")
    durations = log_durations or {}
    for e in endpoints:
        out.append("[[endpoints]]")
        out.append(f"name = {_toml_str(e.name)}")
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
        return _toml_str("none" if a is None else format_address(*a))

    out.append(f"listen = {addr(cfg.listen)}")
    out.append(f"status_listen = {addr(cfg.status_listen)}")
    out.append(f"log_level = {_toml_str(cfg.log_level)}")
    out.append(f"results = {_toml_str(cfg.results)}")
    out += ["", "[node]", f"name = {_toml_str(cfg.node.name)}",
            f"data_dir = {_toml_str(cfg.node.data_dir)}"]
    if cfg.node.icinga_version != DEFAULT_ICINGA_VERSION:
        out.append(f"icinga_version = {cfg.node.icinga_version}")
    if cfg.node.accept_commands:
        out.append("accept_commands = true")
    out.append("")

    default_tls = TLSConfig.for_node(cfg.node.name, cfg.node.data_dir)
    tls_lines = [f"{k} = {_toml_str(getattr(cfg.tls, k))}"
                 for k in ("ca", "cert", "key", "library")
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

    if cfg.objects.unknown != "learn":
        out += ["[objects]", f"unknown = {_toml_str(cfg.objects.unknown)}", ""]
    if cfg.objects.hosts:
        out.append("[objects.hosts]")
        out += [f"{_toml_key(h)} = {_toml_str(z)}" for h, z in cfg.objects.hosts.items()]
        out.append("")

    out.append(topology_to_toml(cfg.zones, cfg.endpoints, cfg.endpoint_log_duration))
    default = CheckSpec("", "")
    for check in cfg.checks:
        out += ["", "[[checks]]", f"host = {_toml_str(check.host)}",
                f"command = {_toml_str(check.command)}"]
        for key in ("service", "command_endpoint", "zone"):
            value = getattr(check, key)
            if value is not None:
                out.append(f"{key} = {_toml_str(value)}")
        for key in ("interval", "retry_interval", "max_check_attempts"):
            value = getattr(check, key)
            if value != getattr(default, key):
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
    return _toml_str(str(value))
