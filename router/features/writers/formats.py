"""Turning one check result into Graphite lines or InfluxDB points, sans-I/O.

The names follow Icinga 2's GraphiteWriter and InfluxdbWriter (lib/perfdata/): the same
default templates, the same escaping, the same metric layout, so dashboards built for
Icinga keep working. What the router cannot know, because it has no object configuration,
is the check command's *name*: ``$host.check_command$`` and ``$service.check_command$``
resolve to the plugin's base name from ``cr.command`` (``/usr/lib/nagios/plugins/check_ping
-H x`` -> ``check_ping``), or ``unknown`` when the result carries no command
(docs/writers.md). Unknown macros resolve to the empty string (Graphite) or drop the tag
(InfluxDB), as in Icinga.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from router.features.writers.perfdata import PerfdataError, PerfdataValue, iter_perfdata
from router.features.writers.records import RecordParams

__all__ = ["NameCache", "ResultView", "check_command_name", "resolve_macros", "escape_graphite_metric",
           "escape_graphite_label", "graphite_lines", "escape_influx", "influx_lines",
           "result_view"]

_MACRO_RE = re.compile(r"\$([^$]*)\$")


@dataclass(slots=True, eq=False)
class ResultView:
    """The fields of one ``event::CheckResult`` the writers use, type-checked once. One
    view serves every writer of the record (``records.RecordParams``): treat it as
    read-only."""

    host: str
    service: str | None
    cr: Mapping[str, Any]
    check_command: str
    execution_end: float
    parsed_perfdata: list[PerfdataValue | PerfdataError] | None = None
    """``perfdata()`` once computed."""

    def perfdata(self) -> list[PerfdataValue | PerfdataError]:
        """The result's perfdata values, parsed once for all writers (``iter_perfdata``:
        an invalid item is its ``PerfdataError``, in place)."""
        parsed = self.parsed_perfdata
        if parsed is None:
            parsed = self.parsed_perfdata = list(
                iter_perfdata(self.cr.get("performance_data")))
        return parsed

    @property
    def state(self) -> int | None:
        state = self.cr.get("state")
        return int(state) if isinstance(state, int | float) and not isinstance(state, bool) \
            else None

    def vars_after(self, key: str) -> Any:
        after = self.cr.get("vars_after")
        return after.get(key) if isinstance(after, dict) else None

    def duration(self, start: str, end: str) -> float | None:
        a, b = self.cr.get(start), self.cr.get(end)
        if _is_number(a) and _is_number(b):
            return float(b) - float(a)
        return None


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_command_name(cr: Mapping[str, Any]) -> str:
    """The plugin's base name from ``cr.command`` (list or shell string), else ``unknown``."""
    command = cr.get("command")
    first: object = None
    if isinstance(command, list) and command:
        first = command[0]
    elif isinstance(command, str) and command.strip():
        first = command.split()[0]
    if isinstance(first, str) and first.strip():
        name = os.path.basename(first.strip().rstrip("/"))
        if name:
            return name
    return "unknown"


def result_view(record: Mapping[str, Any]) -> ResultView | None:
    """The record as a ``ResultView``, or None when it is not a usable check result
    (no host name, no ``cr`` object, no finite ``execution_end``). Computed once per
    ``RecordParams`` (a record the writers' process decoded), for all its writers."""
    if type(record) is RecordParams:
        view = record.view
        if view is False:
            view = record.view = _make_view(record)
        return view                                 # type: ignore[no-any-return]
    return _make_view(record)


def _make_view(record: Mapping[str, Any]) -> ResultView | None:
    host = record.get("host")
    cr = record.get("cr")
    if not isinstance(host, str) or not host or not isinstance(cr, dict):
        return None
    service = record.get("service")
    end = cr.get("execution_end")
    if not _is_number(end) or end <= 0:
        return None
    return ResultView(host, service if isinstance(service, str) and service else None, cr,
                      check_command_name(cr), float(end))


def _macro_value(view: ResultView, macro: str) -> Any:
    """The value of one ``$x.y$`` macro, or None when the router cannot know it."""
    kind, _, attr = macro.partition(".")
    if kind == "host":
        if attr in ("name", "display_name"):
            return view.host
        if attr == "check_command":
            return view.check_command if view.service is None else None
        if view.service is None and attr == "state":
            return view.state
    elif kind == "service" and view.service is not None:
        if attr in ("name", "display_name"):
            return view.service
        if attr == "check_command":
            return view.check_command
        if attr == "state":
            return view.state
    elif kind == "command" and attr == "name":
        return view.check_command
    return None


def resolve_macros(template: str, view: ResultView,
                   escape: Callable[[str], str] = str) -> tuple[str, bool]:
    """Expand ``$host.name$``-style macros; (text, all macros known). ``$$`` is a ``$``."""
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        if not m.group(1):
            return "$"
        value = _macro_value(view, m.group(1))
        if value is None:
            missing = True
            return ""
        return escape(str(value))
    return _MACRO_RE.sub(one, template), not missing


# -- Graphite ---------------------------------------------------------------------------

#: Carbon splits a line at any whitespace, so a tab, a carriage return or a no-break
#: space in a name made three fields four and carbon dropped the line, silently, while the
#: writer counted it written (review). Icinga escapes only the space (and newlines); the
#: names it sends with other whitespace are lost the same way, so replacing all of it
#: changes no name that ever reached carbon.
_WHITESPACE = re.compile(r"\s")


def _no_whitespace(text: str) -> str:
    out = text.replace(" ", "_")
    # Every whitespace character but the ASCII space is unprintable: one C-speed look.
    return out if out.isprintable() else _WHITESPACE.sub("_", out)


def escape_graphite_metric(text: str) -> str:
    """One path element (host or service name): no dots, whitespace or slashes."""
    return _no_whitespace(text.replace(".", "_").replace("\\", "_").replace("/", "_"))


@functools.lru_cache(maxsize=8192)
def escape_graphite_label(text: str) -> str:
    """A perfdata label: dots kept (they make trees), ``::`` becomes a dot."""
    return _no_whitespace(text.replace("\\", "_").replace("/", "_").replace("::", "."))


def _graphite_number(value: float) -> str:
    """Icinga's Convert::ToString of a double: integers without a fraction."""
    if not math.isfinite(value):         # not from our parser; an object's may be anything
        return repr(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _metadata(view: ResultView) -> list[tuple[str, float]]:
    """The metadata Icinga sends that a check result carries (the rest is object state
    the router does not have: downtime_depth, acknowledgement, max_check_attempts)."""
    out: list[tuple[str, float]] = []
    state = view.state
    if state is not None:
        out.append(("state", float(state)))
    for name, key in (("current_attempt", "attempt"), ("state_type", "state_type"),
                      ("reachable", "reachable")):
        v = view.vars_after(key)
        if isinstance(v, bool):
            out.append((name, 1.0 if v else 0.0))
        elif _is_number(v):
            out.append((name, float(v)))
    execution = view.duration("execution_start", "execution_end")
    schedule = view.duration("schedule_start", "schedule_end")
    if schedule is not None:
        out.append(("latency", max(0.0, schedule - (execution or 0.0))))
    if execution is not None:
        out.append(("execution_time", execution))
    return out


class NameCache:
    """Resolved names per (host, service, check command): the templates are the same for
    every result of a checkable, so their macros are expanded and escaped once. Templates
    that use the state (``$service.state$``) are not cached. Bounded: cleared when full."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._names: dict[tuple[str, str | None, str], str] = {}
        self._uses_state: dict[int, bool] = {}

    def get(self, view: ResultView, template: object, compute: Callable[[], str]) -> str:
        uses_state = self._uses_state.get(id(template))
        if uses_state is None:
            uses_state = self._uses_state[id(template)] = ".state$" in repr(template)
        if uses_state:
            return compute()
        key = (view.host, view.service, view.check_command)
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= self.limit:
                self._names.clear()
            name = self._names[key] = compute()
        return name


def graphite_lines(view: ResultView, host_template: str, service_template: str, *,
                   thresholds: bool, metadata: bool,
                   on_invalid: Callable[[PerfdataError], None],
                   names: NameCache | None = None) -> list[str]:
    """The carbon plaintext lines (``path value timestamp``) of one result."""
    template = service_template if view.service is not None else host_template

    def compute() -> str:
        return resolve_macros(template, view, escape_graphite_metric)[0]
    prefix = names.get(view, template, compute) if names is not None else compute()
    ts = int(view.execution_end)
    lines: list[str] = []
    if metadata:
        for name, value in _metadata(view):
            lines.append(f"{prefix}.metadata.{name} {_graphite_number(value)} {ts}\n")
    for pdv in view.perfdata():
        if isinstance(pdv, PerfdataError):
            on_invalid(pdv)
            continue
        key = f"{prefix}.perfdata.{escape_graphite_label(pdv.label)}"
        lines.append(f"{key}.value {_graphite_number(pdv.value)} {ts}\n")
        if thresholds:
            for name, limit in (("crit", pdv.crit), ("warn", pdv.warn), ("min", pdv.min),
                                ("max", pdv.max)):
                if limit is not None:
                    lines.append(f"{key}.{name} {_graphite_number(limit)} {ts}\n")
    return lines


# -- InfluxDB ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=8192)
def escape_influx(text: str) -> str:
    """Icinga's EscapeKeyOrTagValue: ``"`` ``=`` ``,`` and space backslashed; a trailing
    backslash (which would escape the separator) becomes ``_``."""
    out = text.replace('"', '\\"').replace("=", "\\=").replace(",", "\\,").replace(" ", "\\ ")
    out = out.replace("\n", "\\n")
    if out.endswith("\\") and not out.endswith("\\ "):
        out = out[:-1] + "_"
    return out


def _influx_field(value: float | int | bool | str, integer: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{escape_influx(value)}"'
    if integer:
        return f"{int(value)}i"
    return repr(float(value))


def influx_lines(view: ResultView, template: Mapping[str, Any], *, thresholds: bool,
                 metadata: bool, on_invalid: Callable[[PerfdataError], None],
                 names: NameCache | None = None) -> list[str]:
    """The line-protocol points of one result, timestamps in nanoseconds of
    ``execution_end`` (so a re-sent point overwrites itself: idempotent)."""
    def compute() -> str:
        return _influx_series(view, template)
    series = (names.get(view, template, compute) if names is not None
              else compute())
    ts = round(view.execution_end * 1e9)
    lines: list[str] = []
    for pdv in view.perfdata():
        if isinstance(pdv, PerfdataError):
            on_invalid(pdv)
            continue
        lines.append(f"{series},metric={escape_influx(pdv.label) or '_'} "
                     f"{_fields(pdv, thresholds)} {ts}\n")
    if metadata:
        fields = []
        for name, number in _metadata(view):
            integer = name in ("state", "current_attempt", "state_type")
            if name == "reachable":
                fields.append(f"{name}={_influx_field(bool(number))}")
            else:
                fields.append(f"{name}={_influx_field(number, integer)}")
        if fields:
            lines.append(f"{series} {','.join(fields)} {ts}\n")
    return lines


def _influx_series(view: ResultView, template: Mapping[str, Any]) -> str:
    """Measurement and tags, escaped (``check_ping,hostname=a,service=b``)."""
    measurement, _ = resolve_macros(str(template.get("measurement", "")), view)
    if not measurement:
        measurement = view.check_command
    tags = []
    tag_templates = template.get("tags")
    if isinstance(tag_templates, Mapping):
        for tag, tmpl in tag_templates.items():
            value, complete = resolve_macros(str(tmpl), view)
            if complete and value:
                tags.append(f",{escape_influx(str(tag))}={escape_influx(value)}")
    return escape_influx(measurement) + "".join(tags)


def _fields(pdv: PerfdataValue, thresholds: bool) -> str:
    out = [f"value={_influx_field(pdv.value)}"]
    if thresholds:
        for name, limit in (("crit", pdv.crit), ("warn", pdv.warn), ("min", pdv.min),
                            ("max", pdv.max)):
            if limit is not None:
                out.append(f"{name}={_influx_field(limit)}")
    if pdv.unit:
        out.append(f"unit={_influx_field(pdv.unit)}")
    return ",".join(out)
