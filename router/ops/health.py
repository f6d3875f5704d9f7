"""Icinga's ``cluster`` and ``cluster-zone`` health checks, computed from ``/v1/status``.

Operators watch an Icinga cluster with these two built-in checks (users.md: monitoring
the monitoring); a router node must plug into the same service definitions and
dashboards. So the texts, states, exit codes and perfdata labels are Icinga 2.13's
(``lib/methods/clusterzonechecktask.cpp``, ``clusterchecktask.cpp``;
``Utility::FormatDuration`` for durations, ``PerfdataValue::Format`` for perfdata):

* cluster-zone, connected: ``Zone 'Z' is connected. Log lag: <duration>`` (OK), or with
  `` greater than warning|critical threshold: <duration>`` (WARNING/CRITICAL) when a
  threshold is given and the lag is above it;
* cluster-zone, not connected: ``Zone 'Z' is not connected. Log lag: <duration>``
  (CRITICAL); a zone whose only endpoint is this node counts as connected;
* an unknown zone: ``Zone 'Z' does not exist.`` (UNKNOWN);
* cluster: ``Icinga 2 Cluster OK: N endpoints are connected.`` or ``Icinga 2 Cluster
  Problem: N endpoints are not connected.``, the names on a second line.

Everything here is pure: a status document in, a :class:`CheckOutcome` out. The CLI
(``router check``) fetches the document; a node that cannot be reached is UNKNOWN with
the reason (:func:`unreachable`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.config.model import BUILTIN_CHECK_COMMANDS

__all__ = ["OK", "WARNING", "CRITICAL", "UNKNOWN", "STATE_NAMES", "BUILTIN_COMMANDS",
           "CheckOutcome", "Perf", "builtin_command", "cluster", "cluster_zone",
           "format_duration", "icinga_number", "unreachable"]

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


def icinga_number(value: float) -> str:
    """A number as Icinga's ``Convert::ToString(double)`` writes it: integral values
    without decimals, others with six (``std::fixed``)."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return f"{value:.6f}"


def _natural_join(tokens: Sequence[str]) -> str:
    if len(tokens) <= 1:
        return "".join(tokens)
    return ", ".join(tokens[:-1]) + " and " + tokens[-1]


def format_duration(seconds: float) -> str:
    """Icinga's ``Utility::FormatDuration``: ``1 minute and 5 seconds``, ``250
    milliseconds``, ``less than 1 millisecond``."""
    tokens = []
    duration = seconds
    for size, one, many in ((86400, "day", "days"), (3600, "hour", "hours"),
                            (60, "minute", "minutes")):
        if duration >= size:
            count = int(duration // size)
            tokens.append(f"{count} {one if count == 1 else many}")
            duration = int(duration) % size
    if duration >= 1:
        count = int(duration)
        tokens.append(f"{count} {'second' if count == 1 else 'seconds'}")
    if not tokens:
        millis = math.floor(duration * 1000)
        tokens.append(f"{millis} {'millisecond' if millis == 1 else 'milliseconds'}"
                      if millis >= 1 else "less than 1 millisecond")
    return _natural_join(tokens)


@dataclass(frozen=True, slots=True)
class Perf:
    """One perfdata value, formatted like Icinga's ``PerfdataValue::Format``."""

    label: str
    value: float
    unit: str = ""
    warn: float | None = None
    crit: float | None = None

    def format(self) -> str:
        label = f"'{self.label}'" if " " in self.label else self.label
        text = f"{label}={icinga_number(self.value)}{self.unit}"
        if self.warn is not None:
            text += f";{icinga_number(self.warn)}"
            if self.crit is not None:
                text += f";{icinga_number(self.crit)}"
        return text


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """A plugin result: exit code (state), output (may span lines), perfdata."""

    state: int
    output: str
    perfdata: tuple[Perf, ...] = field(default=())

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    def plugin_text(self) -> str:
        """What a monitoring plugin prints: the first output line, ``|`` and the perfdata,
        then any further output lines."""
        first, _, rest = self.output.partition("\n")
        if self.perfdata:
            first += " | " + " ".join(p.format() for p in self.perfdata)
        return first + ("\n" + rest if rest else "")


def unreachable(reason: str) -> CheckOutcome:
    """UNKNOWN: the node's status could not be read (exit code 3, as plugins do)."""
    return CheckOutcome(UNKNOWN, f"UNKNOWN: cannot read the node's status: {reason}")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def cluster_zone(status: Mapping[str, Any], zone: str, *, lag_warning: float | None = None,
                 lag_critical: float | None = None) -> CheckOutcome:
    """The ``cluster-zone`` check for ``zone`` from a ``/v1/status`` document.

    ``lag_warning``/``lag_critical`` are Icinga's ``cluster_lag_warning`` and
    ``cluster_lag_critical`` (seconds); without them only the connection decides, and the
    perfdata thresholds are 0 as in Icinga (its unset macros resolve to 0).
    """
    if not zone:
        return CheckOutcome(UNKNOWN, "Macro 'cluster_zone' must be set.")
    zones = {z.get("name"): z for z in status.get("zones") or () if isinstance(z, dict)}
    entry = zones.get(zone)
    if entry is None:
        return CheckOutcome(UNKNOWN, f"Zone '{zone}' does not exist.")
    local = (status.get("node") or {}).get("name")
    members = [e for e in entry.get("endpoints") or () if isinstance(e, str)]
    by_name = {e.get("name"): e for e in status.get("endpoints") or () if isinstance(e, dict)}
    connected = bool(entry.get("connected")) or members == [local]
    lag = _number(entry.get("log_lag"))
    last_sent = last_received = 0.0
    sums = {"messages_sent_per_second": 0.0, "messages_received_per_second": 0.0,
            "bytes_sent_per_second": 0.0, "bytes_received_per_second": 0.0}
    for name in members:
        ep = by_name.get(name)
        if ep is None or name == local:
            continue
        last_sent = max(last_sent, _number(ep.get("last_message_sent")))
        last_received = max(last_received, _number(ep.get("last_message_received")))
        for key in sums:
            sums[key] += _number(ep.get(key))
    state = OK
    if connected:
        output = f"Zone '{zone}' is connected. Log lag: {format_duration(lag)}"
        if lag_critical is not None and lag > lag_critical:
            state = CRITICAL
            output += f" greater than critical threshold: {format_duration(lag_critical)}"
        elif lag_warning is not None and lag > lag_warning:
            state = WARNING
            output += f" greater than warning threshold: {format_duration(lag_warning)}"
    else:
        state = CRITICAL
        output = f"Zone '{zone}' is not connected. Log lag: {format_duration(lag)}"
    perfdata = (
        Perf("slave_lag", lag, "s", lag_warning or 0.0, lag_critical or 0.0),
        Perf("last_messages_sent", last_sent),
        Perf("last_messages_received", last_received),
        Perf("sum_messages_sent_per_second", sums["messages_sent_per_second"]),
        Perf("sum_messages_received_per_second", sums["messages_received_per_second"]),
        Perf("sum_bytes_sent_per_second", sums["bytes_sent_per_second"]),
        Perf("sum_bytes_received_per_second", sums["bytes_received_per_second"]),
    )
    return CheckOutcome(state, output, perfdata)


#: The relations Icinga's ApiListener::GetStatus counts: our zone's other endpoints, the
#: parent zone's and the direct child zones'. Counting every configured endpoint made a
#: master's check CRITICAL for the agents below a satellite, which it never connects to
#: (a review).
_COUNTED_RELATIONS = frozenset({"peer", "parent", "child"})


def _adjacent_endpoints(status: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The endpoints Icinga's ApiListener counts (``_COUNTED_RELATIONS``)."""
    local = (status.get("node") or {}).get("name")
    for ep in status.get("endpoints") or ():
        if isinstance(ep, dict) and ep.get("name") != local \
                and ep.get("relation") in _COUNTED_RELATIONS:
            yield ep


def cluster(status: Mapping[str, Any]) -> CheckOutcome:
    """The ``cluster`` check: CRITICAL when any configured endpoint is not connected."""
    endpoints = list(_adjacent_endpoints(status))
    connected = [str(e.get("name")) for e in endpoints if e.get("connected")]
    missing = [str(e.get("name")) for e in endpoints if not e.get("connected")]
    perfdata = (Perf("api_num_endpoints", len(endpoints)),
                Perf("api_num_conn_endpoints", len(connected)),
                Perf("api_num_not_conn_endpoints", len(missing)))
    if missing:
        return CheckOutcome(CRITICAL, f"Icinga 2 Cluster Problem: {len(missing)} endpoints "
                            f"are not connected.\n({', '.join(missing)})", perfdata)
    return CheckOutcome(OK, f"Icinga 2 Cluster OK: {len(connected)} endpoints are "
                        f"connected.\n({', '.join(connected)})", perfdata)


#: Check commands a node can answer from its own state, as Icinga's ITL names them.
BUILTIN_COMMANDS = BUILTIN_CHECK_COMMANDS


def _seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def builtin_command(command: str, macros: Mapping[str, Any],
                    status: Callable[[], Mapping[str, Any]]) -> CheckOutcome | None:
    """Run built-in ``command`` with Icinga's macros (``cluster_zone``,
    ``cluster_lag_warning``, ``cluster_lag_critical``; ``host.name`` is the default zone,
    as in the ITL) against ``status()`` (the node's /v1/status document); None when the
    command is not built in."""
    if command == "cluster":
        return cluster(status())
    if command == "cluster-zone":
        zone = macros.get("cluster_zone") or macros.get("host.name") or ""
        return cluster_zone(status(), str(zone),
                            lag_warning=_seconds(macros.get("cluster_lag_warning")),
                            lag_critical=_seconds(macros.get("cluster_lag_critical")))
    return None
