"""Framing of the executor socket: length-prefixed frames holding orjson objects.

Both directions send one JSON object per frame, prefixed by its length as a 4-byte
big-endian unsigned integer; ``checkers/README.md`` lists the messages. Both ends are this
package (the pool in the router process, the worker in the executor process), so the
framing is the simplest that can carry binary-safe payloads: it is not the cluster's
netstring, and ``checkers`` does not depend on the router's protocol code. This module only
frames and unframes, it does no I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from checkers.errors import WireError
from checkers.messages import CheckRequest, PluginResult

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME",
    "FrameReader",
    "frame",
    "request_message",
    "reply_message",
    "result_from_reply",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 64 << 20
"""Largest frame either side accepts: a reply holds at most ``output_limit`` bytes of
output, which JSON escaping can grow up to six times; 64 MiB leaves room for the 1 MiB
default and for limits raised to a few MiB."""


_LENGTH = struct.Struct(">I")


def frame(message: dict[str, Any]) -> bytes:
    """One message, encoded and framed."""
    body = orjson.dumps(message)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Bytes in, decoded JSON objects out; raises :class:`WireError` on garbage.

    Input is consumed once per :meth:`feed` call (the buffer is trimmed once, not per
    frame), so a burst of many small frames costs linear time.
    """

    __slots__ = ("_buffer", "_max_size")

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_size = max_size

    def _payloads(self) -> list[bytes]:
        buffer = self._buffer
        payloads: list[bytes] = []
        start = 0
        size = len(buffer)
        while size - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self._max_size:
                raise WireError(f"bad frame on the executor socket: {length} bytes announced, "
                                f"at most {self._max_size} allowed")
            end = start + _LENGTH.size + length
            if end > size:
                break
            payloads.append(bytes(buffer[start + _LENGTH.size:end]))
            start = end
        if start:
            del buffer[:start]
        return payloads

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        for payload in self._payloads():
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError as error:
                raise WireError(f"bad JSON on the executor socket: {error}") from None
            if not isinstance(message, dict):
                raise WireError("a frame on the executor socket is not a JSON object")
            messages.append(message)
        return messages


def request_message(job_id: int, request: CheckRequest) -> dict[str, Any]:
    """The request frame body for ``request`` (see ``checkers/README.md``)."""
    message: dict[str, Any] = {"id": job_id, "timeout": request.timeout,
                               "output_limit": request.output_limit}
    if request.internal is not None:
        message["internal"] = request.internal
        message["macros"] = dict(request.macros)
    else:
        message["argv"] = list(request.argv)
        if request.env:
            message["env"] = dict(request.env)
    return message


def reply_message(job_id: Any, result: PluginResult) -> dict[str, Any]:
    return {
        "id": job_id,
        "exit_status": result.exit_status,
        "output": result.output,
        "performance_data": result.performance_data,
        "execution_start": result.execution_start,
        "execution_end": result.execution_end,
        "timed_out": result.timed_out,
        "truncated": result.truncated,
        "error": result.error,
        **({"raw_output": result.raw_output} if result.raw_output is not None else {}),
    }


def result_from_reply(reply: dict[str, Any]) -> PluginResult:
    """A :class:`PluginResult` from a reply frame; raises :class:`WireError` if malformed."""
    try:
        exit_status = reply["exit_status"]
        output = reply["output"]
        perfdata = reply.get("performance_data") or []
        start = float(reply["execution_start"])
        end = float(reply["execution_end"])
    except (KeyError, TypeError, ValueError) as error:
        raise WireError(f"malformed reply: {error!r}") from None
    if not isinstance(exit_status, int) or not isinstance(output, str) \
            or not isinstance(perfdata, list):
        raise WireError("malformed reply: wrong field types")
    error_text = reply.get("error")
    raw_output = reply.get("raw_output")
    return PluginResult(exit_status, output, [str(item) for item in perfdata], start, end,
                        bool(reply.get("timed_out")), bool(reply.get("truncated")),
                        error_text if isinstance(error_text, str) else None,
                        raw_output if isinstance(raw_output, str) else None)
