"""One zone's synced configuration as Icinga lays it out, and the checks on a received one.

Icinga keeps each zone's synced files under ``api/zones/<zone>/`` with paths relative to
that directory, always starting with ``/``: ``/_etc/hosts.conf`` (a master's
``zones.d/<zone>/hosts.conf``, tag ``_etc``), ``/.timestamp`` (when the master copied the
zone, ``"%f"`` seconds) and ``/.checksums`` (the master's SHA-256 of each ``_etc`` file, as
JSON). ``config::Update`` carries the same files: ``*.conf`` in ``update``, everything
else in ``update_v2``, and in ``checksums`` the SHA-256 hex of every file sent
(lib/remote/apilistener-filesync.cpp, LoadConfigDir). Internal files (``/.``-prefixed) are
not compared when deciding whether a zone changed: the timestamp changes on every master
restart, and comparing it would reload every agent each time.

Everything here is pure: no disk, no sockets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

TIMESTAMP = "/.timestamp"
CHECKSUMS = "/.checksums"
#: Icinga's marker of a zone it holds from zones.d; never synced (a parent < 2.11 sent it).
AUTHORITATIVE = ".authoritative"


class UpdateRefused(Exception):
    """A received ``config::Update`` that is not stored: ``reason`` is the metric label."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


def checksum(content: str) -> str:
    """SHA-256 hex of a file's content (Icinga's ``GetChecksum``)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def is_internal(path: str) -> bool:
    """``/.timestamp``, ``/.checksums``: metadata, not configuration (Icinga: ``/.*``)."""
    return path.startswith("/.")


def path_problem(path: object) -> str | None:
    """Why a file path of an update cannot be stored under its zone directory, or None.

    A path is relative to the zone directory, starts with ``/`` and has no empty, ``.`` or
    ``..`` segment and no NUL byte: ``//etc/passwd`` would be absolute once the leading
    slash is taken off, ``/../x`` would leave the zone directory.
    """
    if not isinstance(path, str):
        return f"file name {path!r} is not a string"
    if "\x00" in path:
        return f"file name {path!r} contains a NUL byte"
    if not path.startswith("/") or len(path) < 2:
        return f"file name {path!r} does not start with '/'"
    for segment in path[1:].split("/"):
        if segment in ("", ".", ".."):
            return f"file name {path!r} has an empty, '.' or '..' segment"
    return None


def format_timestamp(ts: float) -> str:
    """``.timestamp`` content: C++ ``std::fixed`` (six decimals)."""
    return f"{ts:.6f}"


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """The files of one zone: relative path -> content (``/.timestamp`` and
    ``/.checksums`` included when present)."""

    name: str
    files: Mapping[str, str]
    checksums: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checksums",
                           {path: checksum(text) for path, text in sorted(self.files.items())})

    @property
    def content_checksums(self) -> dict[str, str]:
        """Checksums of the configuration files (internal files left out)."""
        return {p: c for p, c in self.checksums.items() if not is_internal(p)}

    @property
    def digest(self) -> str:
        """One SHA-256 over the configuration files' paths and checksums (status, logs)."""
        return hashlib.sha256(orjson.dumps(self.content_checksums,
                                           option=orjson.OPT_SORT_KEYS)).hexdigest()

    @property
    def timestamp(self) -> float | None:
        text = self.files.get(TIMESTAMP)
        try:
            return float(text) if text is not None else None
        except ValueError:
            return None

    @property
    def size(self) -> int:
        return sum(len(text.encode("utf-8")) for text in self.files.values())

    def same_content(self, other: ZoneConfig | None) -> bool:
        """Icinga's CheckConfigChange: equal when the configuration files are."""
        return other is not None and self.content_checksums == other.content_checksums

    def update_v1(self) -> dict[str, str]:
        """``update``: the ``*.conf`` files."""
        return {p: t for p, t in self.files.items() if p.endswith(".conf")}

    def update_v2(self) -> dict[str, str]:
        """``update_v2``: every other file (``.timestamp``, ``.checksums``, ...)."""
        return {p: t for p, t in self.files.items() if not p.endswith(".conf")}

    def hosts_files(self) -> list[str]:
        """The contents of the ``*.conf`` files, in path order (object definitions)."""
        return [self.files[p] for p in sorted(self.files) if p.endswith(".conf")]


def authoritative_zone(name: str, conf_files: Mapping[str, str], now: float,
                       previous: ZoneConfig | None) -> ZoneConfig:
    """A zone we hold from a zones directory (master), with Icinga's metadata files.

    ``conf_files`` are keyed ``/_etc/<relative path>``. ``/.checksums`` lists them; the
    ``/.timestamp`` of ``previous`` is kept when the configuration did not change, so a
    restart of ours does not make every agent compare its configuration again.
    """
    files = dict(conf_files)
    files[CHECKSUMS] = orjson.dumps({p: checksum(t) for p, t in conf_files.items()},
                                    option=orjson.OPT_SORT_KEYS).decode()
    candidate = ZoneConfig(name, {**files, TIMESTAMP: format_timestamp(now)})
    if previous is not None and previous.same_content(candidate) \
            and previous.timestamp is not None:
        return previous
    return candidate


def parse_update(params: Mapping[str, Any], zone_problem: Callable[[str], str | None],
                 max_bytes: int, now: float) -> dict[str, ZoneConfig]:
    """The zones of a received ``config::Update``, checked; raises :class:`UpdateRefused`.

    ``zone_problem(name)`` says why this node may not hold a zone (unknown, not ours), or
    None. All or nothing: one bad zone or file refuses the whole update, so a parent that
    sends something wrong never leaves us with half of its configuration.
    """
    update = params.get("update")
    update_v2 = params.get("update_v2", {})
    sums = params.get("checksums")
    if not isinstance(update, dict):
        raise UpdateRefused("malformed", "'update' is missing or not an object")
    if update_v2 is None:
        update_v2 = {}
    if not isinstance(update_v2, dict) or (sums is not None and not isinstance(sums, dict)):
        raise UpdateRefused("malformed", "'update_v2' or 'checksums' is not an object")
    zones: dict[str, ZoneConfig] = {}
    total = 0
    for name in sorted(set(update) | set(update_v2)):
        problem = zone_problem(name)
        if problem is not None:
            raise UpdateRefused("zone_not_allowed", problem)
        files: dict[str, str] = {}
        for part in (update.get(name), update_v2.get(name)):
            if part is None:
                continue
            if not isinstance(part, dict):
                raise UpdateRefused("malformed", f"zone {name!r}: files are not an object")
            for path, content in part.items():
                problem = path_problem(path)
                if problem is not None:
                    raise UpdateRefused("bad_path", f"zone {name!r}: {problem}")
                if not isinstance(content, str):
                    raise UpdateRefused("malformed", f"zone {name!r}: content of {path!r} "
                                        f"is not a string")
                total += len(content.encode("utf-8"))
                if total > max_bytes:
                    raise UpdateRefused("too_large", f"more than {max_bytes} bytes of files "
                                        f"(limits.max_config_update_bytes)")
                if path.rsplit("/", 1)[-1] != AUTHORITATIVE:
                    files[path] = content
        zone_sums = sums.get(name) if sums is not None else None
        if sums is not None and not isinstance(zone_sums, dict):
            raise UpdateRefused("malformed", f"zone {name!r}: no checksums")
        if zone_sums is not None:
            for path, content in files.items():
                if zone_sums.get(path) != checksum(content):
                    raise UpdateRefused("checksum_mismatch", f"zone {name!r}: checksum of "
                                        f"{path!r} does not match its content")
        if TIMESTAMP not in files:  # Icinga writes the receive time then
            files[TIMESTAMP] = format_timestamp(now)
        zones[name] = ZoneConfig(name, files)
    return zones


def update_params(zones: list[ZoneConfig]) -> dict[str, Any]:
    """``config::Update`` params for these zones, as Icinga 2.13 fills them."""
    return {
        "checksums": {z.name: dict(z.checksums) for z in zones},
        "update": {z.name: z.update_v1() for z in zones},
        "update_v2": {z.name: z.update_v2() for z in zones},
    }


__all__ = ["AUTHORITATIVE", "CHECKSUMS", "TIMESTAMP", "UpdateRefused", "ZoneConfig",
           "authoritative_zone", "checksum", "format_timestamp", "is_internal",
           "parse_update", "path_problem", "update_params"]
