"""The JSON type of every parameter a routed method carries, checked before routing.

A peer controls every byte of ``params``. Code further on (routing, the send queues'
coalescing key, the result view, command bookkeeping) reads ``host``, ``service`` and the
rest as the types Icinga sends; a ``service`` that is an object instead of a string used to
raise ``TypeError`` deep inside a connection (unhashable coalescing key: traceback, link
dropped, nothing counted). :func:`check_params` compares each parameter that is present with
the table below, once per message, and names the first one of the wrong type, so the node
refuses the message (counted, logged with peer, method, field and expected type) while the
session stays up, up to a budget (:class:`RefusalBudget`).

The table lists the parameters of Icinga 2.13's handlers (``lib/icinga/clusterevents*.cpp``,
``apilistener-configsync.cpp``, ``jsonrpcconnection-pki.cpp``) whose type is certain; a
parameter that is absent is not this module's business (the router refuses a missing object
name as ``no_params``; handlers treat other missing ones as Icinga does). ``null`` passes
only for the optional fields Icinga itself reads as "empty" (``service``, ``zone``,
``endpoint``...). Icinga's numbers are doubles: JSON integers and floats both pass, booleans
do not (in JSON a boolean is not a number). Pure: no I/O, no clock (the budget takes ``now``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["FIELDS", "FieldProblem", "RefusalBudget", "check_params", "json_type"]

_NULL = type(None)
STRING: Final = frozenset({str})
NUMBER: Final = frozenset({int, float})
BOOLEAN: Final = frozenset({bool})
OBJECT: Final = frozenset({dict})
ARRAY: Final = frozenset({list})
_NAMES = {str: "string", int: "number", float: "number", bool: "boolean", dict: "object",
          list: "array", _NULL: "null"}


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type."""
    return _NAMES.get(type(value), type(value).__name__)


def _describe(types: frozenset[type]) -> str:
    names = sorted({_NAMES[t] for t in types if t is not _NULL})
    text = " or ".join(names)
    return text + " or null" if _NULL in types else text


def _f(name: str, types: frozenset[type], nullable: bool = False) -> tuple[str, frozenset[type]]:
    return name, (types | {_NULL}) if nullable else types


# The checkable's name: host always, service optional (absent for host checks).
_CHECKABLE = (_f("host", STRING), _f("service", STRING, nullable=True))

#: method -> (parameter, accepted Python types of the parsed JSON value), in check order.
FIELDS: Final[dict[str, tuple[tuple[str, frozenset[type]], ...]]] = {
    "icinga::Hello": (_f("version", NUMBER), _f("capabilities", NUMBER)),
    "log::SetLogPosition": (_f("log_position", NUMBER),),
    "event::CheckResult": (*_CHECKABLE, _f("cr", OBJECT)),
    "event::SetNextCheck": (*_CHECKABLE, _f("next_check", NUMBER)),
    "event::SetLastCheckStarted": (*_CHECKABLE, _f("last_check_started", NUMBER)),
    "event::SetStateBeforeSuppression": (*_CHECKABLE, _f("state_before_suppression", NUMBER)),
    "event::SetSuppressedNotifications": (*_CHECKABLE, _f("suppressed_notifications", NUMBER)),
    "event::SetSuppressedNotificationTypes": (_f("notification", STRING),
                                              _f("suppressed_notifications", NUMBER)),
    "event::SetNextNotification": (_f("notification", STRING),
                                   _f("next_notification", NUMBER)),
    "event::SetForceNextCheck": (*_CHECKABLE, _f("forced", BOOLEAN)),
    "event::SetForceNextNotification": (*_CHECKABLE, _f("forced", BOOLEAN)),
    "event::SetAcknowledgement": (*_CHECKABLE, _f("author", STRING), _f("comment", STRING),
                                  _f("acktype", NUMBER), _f("notify", BOOLEAN),
                                  _f("persistent", BOOLEAN), _f("expiry", NUMBER),
                                  _f("change_time", NUMBER)),
    "event::ClearAcknowledgement": (*_CHECKABLE, _f("author", STRING, nullable=True),
                                    _f("change_time", NUMBER)),
    # cr: null for an object never checked (Icinga serializes its missing last result;
    # acknowledgements, downtimes and custom notifications on new hosts): review.
    "event::SendNotifications": (*_CHECKABLE, _f("cr", OBJECT, nullable=True),
                                 _f("type", NUMBER),
                                 _f("author", STRING), _f("text", STRING)),
    "event::NotificationSentUser": (*_CHECKABLE, _f("notification", STRING),
                                    _f("user", STRING), _f("type", NUMBER),
                                    _f("cr", OBJECT, nullable=True),
                                    _f("author", STRING), _f("text", STRING),
                                    _f("command", STRING)),
    "event::NotificationSentToAllUsers": (
        *_CHECKABLE, _f("notification", STRING), _f("users", ARRAY), _f("type", NUMBER),
        _f("cr", OBJECT, nullable=True), _f("author", STRING), _f("text", STRING),
        _f("last_notification", NUMBER), _f("next_notification", NUMBER),
        _f("notification_number", NUMBER), _f("last_problem_notification", NUMBER),
        _f("no_more_notifications", BOOLEAN)),
    "event::ExecuteCommand": (
        _f("host", STRING), _f("service", STRING, nullable=True),
        _f("command_type", STRING), _f("command", STRING), _f("macros", OBJECT),
        # check_timeout: an untyped Value in Icinga, forwarded as given ("60" from a
        # custom variable imported as text); the agent converts it (review).
        _f("check_timeout", NUMBER | STRING, nullable=True),
        _f("source", STRING, nullable=True),
        _f("deadline", NUMBER, nullable=True), _f("endpoint", STRING, nullable=True)),
    "event::ExecutedCommand": (*_CHECKABLE, _f("execution", STRING), _f("exit", NUMBER),
                               _f("output", STRING), _f("start", NUMBER), _f("end", NUMBER)),
    "event::UpdateExecutions": (*_CHECKABLE, _f("executions", OBJECT)),
    "event::SetRemovalInfo": (_f("object_type", STRING), _f("object_name", STRING),
                              _f("removed_by", STRING, nullable=True),
                              _f("remove_time", NUMBER)),
    "config::Update": (_f("update", OBJECT), _f("update_v2", OBJECT, nullable=True),
                       _f("checksums", OBJECT, nullable=True)),
    "config::UpdateObject": (_f("name", STRING), _f("type", STRING), _f("version", NUMBER),
                             _f("zone", STRING, nullable=True),
                             _f("config", STRING, nullable=True),
                             _f("modified_attributes", OBJECT, nullable=True),
                             _f("original_attributes", ARRAY, nullable=True)),
    "config::DeleteObject": (_f("name", STRING), _f("type", STRING), _f("version", NUMBER),
                             _f("zone", STRING, nullable=True)),
    "pki::RequestCertificate": (_f("ticket", STRING, nullable=True),
                                _f("cert_request", STRING, nullable=True)),
    "pki::UpdateCertificate": (_f("status_code", NUMBER), _f("cert", STRING, nullable=True),
                               _f("ca", STRING, nullable=True),
                               _f("fingerprint_request", STRING, nullable=True),
                               _f("error", STRING, nullable=True)),
}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A parameter of the wrong JSON type: what the log line and the refusal say."""

    field: str
    expected: str
    got: str

    def describe(self) -> str:
        return f"parameter {self.field!r} must be {self.expected}, got {self.got}"


# Hot path: per method, (name, types, expected text) with the description precomputed.
_COMPILED: Final = {m: tuple((name, types, _describe(types)) for name, types in specs)
                    for m, specs in FIELDS.items()}
_ABSENT: Final = object()


def check_params(method: str, params: dict[str, Any] | None) -> FieldProblem | None:
    """The first parameter of ``params`` whose JSON type is wrong for ``method``, or None.

    Unknown methods and missing ``params`` are left to the router (``unknown_method``,
    ``no_params``)."""
    specs = _COMPILED.get(method)
    if specs is None or params is None:
        return None
    get = params.get
    for name, types, expected in specs:
        value = get(name, _ABSENT)
        if value is not _ABSENT and type(value) not in types:
            return FieldProblem(name, expected, json_type(value))
    return None


class RefusalBudget:
    """How many malformed messages a session may send per window before it is cut.

    One typo in a peer's code should cost that message, not the link (Icinga logs and
    keeps the connection); a peer that sends nothing but garbage should not get to burn
    the node's CPU and log rate forever.
    """

    __slots__ = ("limit", "window", "spent", "_since")

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.spent = 0
        self._since = 0.0

    def spend(self, now: float) -> bool:
        """Count one refusal at ``now``; False once more than ``limit`` fell in one window."""
        if now - self._since >= self.window:
            self._since = now
            self.spent = 0
        self.spent += 1
        return self.spent <= self.limit
