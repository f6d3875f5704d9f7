"""JSON-RPC payloads of the Icinga 2 cluster protocol: parse once, re-encode once.

Icinga speaks a subset of JSON-RPC 2.0 (``lib/remote/jsonrpc.cpp``,
``lib/remote/jsonrpcconnection.cpp``): nearly every message is a notification
``{"jsonrpc":"2.0","method":...,"params":{...}}``; ``"jsonrpc"`` is always sent and never
checked; requests carry an ``id`` and are answered with ``result`` or with ``error`` as a
plain diagnostic string. When Icinga relays a message it adds the top-level fields ``ts``
(the relaying node's Unix time, a double) and ``originZone``.

Parsing follows ``JsonRpc::DecodeMessage``: the text is UTF-8-sanitised first (invalid
sequences become U+FFFD instead of failing), then parsed; invalid JSON and a top level that
is not an object break the connection. A message without a usable ``method`` is *not* a
protocol error in Icinga (it is dropped, with a warning if it has an ``id``), so here it
parses fine with ``method=None`` and the caller decides.

Everything is decoded with exactly one ``orjson.loads`` on the hot path; the nesting
check only walks the object when the bracket count says it could be too deep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from router.errors import InvalidMessage

__all__ = [
    "Message",
    "encode",
    "error_response",
    "notification",
    "parse_message",
    "relay_payload",
    "response",
]

CHECK_RESULT_METHOD: Final = "event::CheckResult"


@dataclass(slots=True)
class Message:
    """One decoded JSON-RPC message; the fields are extracted once at parse time."""

    raw: bytes                  # the payload exactly as received (no netstring framing)
    data: dict[str, Any]        # the parsed top-level object (parsed once, with orjson)
    method: str | None          # None when missing or not a string (dropped by the node)
    params: dict[str, Any] | None  # None when missing or not an object
    id: object | None           # JSON-RPC id when present (request), else None
    ts: float | None            # top-level "ts" when it is a number
    origin_zone: str | None     # top-level "originZone" when it is a string


def parse_message(payload: bytes, max_depth: int = 128) -> Message:
    """Decode one netstring payload into a :class:`Message`.

    Raises ``InvalidMessage`` for invalid JSON (including the empty payload of ``0:,``),
    a top level that is not an object (Icinga: "JSON-RPC message must be a dictionary"),
    and nesting deeper than ``max_depth`` containers (the top-level object counts as 1).

    The depth check stays cheap: nesting ``d`` levels takes ``d`` opening brackets and
    at least ``2*d`` bytes, so short payloads are never examined, and a longer one is
    only walked when it holds more than ``max_depth`` of ``{`` and ``[`` (counted in C;
    brackets inside strings count too, so the count can only overestimate the depth).
    """
    data = _loads(payload)
    if type(data) is not dict:
        raise InvalidMessage("JSON-RPC message must be an object")
    if (len(payload) > 2 * max_depth + 1
            and payload.count(b"{") + payload.count(b"[") > max_depth
            and _deeper_than(data, max_depth)):
        raise InvalidMessage(f"JSON-RPC message is nested deeper than {max_depth} levels")
    get = data.get
    method = get("method")
    params = get("params")
    ts = get("ts")
    origin_zone = get("originZone")
    return Message(                     # positional: measurably cheaper on the hot path
        payload,
        data,
        method if type(method) is str else None,
        params if type(params) is dict else None,
        get("id"),
        float(ts) if type(ts) is float or type(ts) is int else None,
        origin_zone if type(origin_zone) is str else None,
    )


def _loads(payload: bytes) -> Any:
    """Parse JSON like Icinga's ``JsonDecode``: sanitise invalid UTF-8, refuse bad JSON.

    orjson refuses invalid UTF-8 outright, so the sanitising is a retry on the (rare)
    error path: the common case stays a single ``orjson.loads`` on the raw bytes. The
    retry replaces invalid sequences with U+FFFD, as utf8cpp's ``replace_invalid`` does
    in ``Utility::ValidateUTF8``.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        if _is_valid_utf8(payload):
            raise InvalidMessage(f"invalid JSON: {error}") from None
    try:
        return orjson.loads(payload.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError as error:
        raise InvalidMessage(f"invalid JSON: {error}") from None


def _is_valid_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _deeper_than(value: dict[str, Any] | list[Any], max_depth: int) -> bool:
    """Whether ``value`` nests containers more than ``max_depth`` levels deep.

    Iterative on purpose: orjson accepts up to 1024 levels, more than Python's default
    recursion limit, and a recursive walk would turn a hostile payload into a
    ``RecursionError`` instead of an ``InvalidMessage``.
    """
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def encode(data: dict[str, Any]) -> bytes:
    """Encode a message object as compact UTF-8 JSON (the netstring payload)."""
    return orjson.dumps(data)


def notification(method: str, params: dict[str, Any], ts: float | None = None) -> bytes:
    """Encode a notification the way Icinga writes one.

    Keys are sorted (Icinga's ``Dictionary`` is an ordered map, so its output is sorted
    by key) so our control messages are byte-identical to Icinga's, e.g. the Hello.
    """
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if ts is not None:
        message["ts"] = ts
    return orjson.dumps(message, option=orjson.OPT_SORT_KEYS)


def response(id: object, result: object) -> bytes:  # noqa: A002 - JSON-RPC field name
    """Encode the answer to a request: ``{"id":..,"jsonrpc":"2.0","result":..}``."""
    return orjson.dumps({"id": id, "jsonrpc": "2.0", "result": result},
                        option=orjson.OPT_SORT_KEYS)


def error_response(id: object, text: str) -> bytes:  # noqa: A002 - JSON-RPC field name
    """Encode a failed request's answer in Icinga's form: ``"error"`` is plain text.

    Icinga puts the handler's diagnostic string in ``error`` rather than a JSON-RPC 2.0
    error object, and its own clients expect that shape.
    """
    return orjson.dumps({"id": id, "jsonrpc": "2.0", "error": text},
                        option=orjson.OPT_SORT_KEYS)


def relay_payload(msg: Message, ts: float, origin_zone: str | None,
                  origin: tuple[str, float] | None = None) -> bytes:
    """Re-encode ``msg`` for forwarding, restamped as Icinga's relay does.

    * ``ts`` is replaced: receivers drop any message whose ``ts`` is older than the last
      one seen on that connection (``JsonRpcConnection::MessageHandler``), so forwarding
      the senders' original stamps would make interleaved messages vanish.
    * ``originZone`` is set, or removed when ``origin_zone`` is None.
    * ``routerOrigin`` is set to ``[endpoint, ts]`` when ``origin`` is given: where the
      message entered our chain of nodes, so the next hop recognises it after a relay in
      between restarted (``router.node.receipts``). Icinga ignores the key.
    * For ``event::CheckResult`` a ``cr`` without ``performance_data`` gets ``[]``:
      without the key Icinga stores an empty check result.

    ``msg.data`` is never modified; only the dicts on the changed path are copied
    (shallowly), so one parsed message can be relayed several times.
    """
    data = dict(msg.data)
    data["ts"] = ts
    if origin_zone is None:
        data.pop("originZone", None)
    else:
        data["originZone"] = origin_zone
    if origin is not None:
        data["routerOrigin"] = origin
    else:
        # Never passed on unvetted: a child's own routerOrigin on a message without ts
        # (which gets no origin check) silenced another agent at the next hop (review).
        data.pop("routerOrigin", None)
    if msg.method == CHECK_RESULT_METHOD:
        params = _with_performance_data(msg.params)
        if params is not None:
            data["params"] = params
    return orjson.dumps(data)


def _with_performance_data(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of ``params`` whose ``cr`` has ``performance_data``, or None if no change."""
    if params is None:
        return None
    cr = params.get("cr")
    if type(cr) is not dict or "performance_data" in cr:
        return None
    cr = dict(cr)
    cr["performance_data"] = []
    params = dict(params)
    params["cr"] = cr
    return params

