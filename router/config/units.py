"""Small value parsers and checks: addresses, ports, durations, sizes, names, did-you-mean.

Shared by the TOML builder, the validation, quickstart and the zones.conf import (and public
through the package for the CLI). They know nothing about files or lines: they raise
:class:`ValueError` with a short reason, or return the problem, and the caller adds where.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable

from router.config.model import DEFAULT_PORT, KiB, MiB

__all__ = [
    "parse_address", "format_address", "parse_duration", "parse_size", "parse_port",
    "check_host", "check_name", "type_name", "suggest",
]


_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
               "kib": KiB, "mib": MiB, "gib": 1024**3}


def check_host(host: str, original: str) -> None:
    """Raise ValueError unless ``host`` (from ``original``) is a host name or IP address."""
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


def parse_port(text: str, original: str, allow_zero: bool) -> int:
    """The port in ``text`` (from ``original``), 1-65535 (or 0 with ``allow_zero``)."""
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
        raise ValueError(f"expected a 'host:port' string, got {type_name(text)}")
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
        check_host(host, text)
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
        return host, parse_port(rest[1:], text, allow_port_zero)
    if s.count(":") > 1:
        raise ValueError(f"IPv6 addresses must be written in brackets, e.g. '[{s}]' "
                         f"or '[::1]:{default_port}'")
    host, sep, port_text = s.partition(":")
    check_host(host, text)
    if not sep:
        return host, default_port
    return host, parse_port(port_text, text, allow_port_zero)


def format_address(host: str, port: int) -> str:
    """Inverse of :func:`parse_address`: brackets around IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string with an Icinga-style suffix (ms, s, m, h, d)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {type_name(value)}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        raise ValueError(f"invalid duration {value!r} (examples: 30, 2.5, \"500ms\", "
                         "\"45s\", \"5m\", \"12h\", \"1d\")")
    raise ValueError(f"expected a duration, got {type_name(value)}")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"16MiB"``, ``"512 KiB"``, ``"2MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type_name(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        raise ValueError(f"invalid size {value!r} (examples: 1048576, \"512KiB\", \"16MiB\")")
    raise ValueError(f"expected an integer, got {type_name(value)}")


def type_name(value: object) -> str:
    """``value``'s type in words for messages, in TOML terms ("an array", "a table")."""
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


def suggest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """A " (did you mean 'x'?)" hint for a message, or "" without a close candidate."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean '{match[0]}'?)" if match else ""


def check_name(name: str, what: str) -> str | None:
    """Problem with an object name, or None. Icinga forbids '!' in object names."""
    if not name:
        return f"{what} name must not be empty"
    if "!" in name:
        return f"{what} name {name!r} must not contain '!'"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"{what} name {name!r} must not contain control characters"
    return None
