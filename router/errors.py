"""Exception tree of the router.

::

    RouterError                     root: the CLI catches this one type
    ├── ConfigError(ValueError)     bad configuration; carries file, line and key
    ├── ProtocolError               the peer broke the wire protocol (connection is closed)
    │   ├── FramingError            bad netstring: length prefix, missing comma, ...
    │   ├── MessageTooLarge         length prefix above the peer's trust limit
    │   └── InvalidMessage          payload is not a JSON object, too deep, no method, ...
    ├── TLSSetupError               certificates or keys unusable (at start, never per peer)
    ├── DataDirError                the data directory is not writable (at start)
    └── InvalidState(AssertionError) the code called something in the wrong state (a bug)

Errors about one message that the router *refuses* (wrong direction, unknown object, ...)
are not exceptions: routing returns a refusal reason, the message is logged and counted
and the connection stays up, as Icinga does.
"""

from __future__ import annotations


class RouterError(Exception):
    """Root of every exception the router raises on purpose."""


class ConfigError(RouterError, ValueError):
    """The configuration is unusable.

    ``line`` is 1-based and ``None`` when the problem has no single place in the file
    (for example a zone tree with a cycle).
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}:{key} {self.message}"


class ProtocolError(RouterError):
    """The remote peer violated the cluster protocol; the connection must be closed.

    ``reason`` is a short stable token used as a metric label (``framing``,
    ``too_large``, ``invalid_json``...), the message text is for the log line.
    """

    reason = "protocol"


class FramingError(ProtocolError):
    """The netstring framing is broken (length prefix, separator, trailing comma)."""

    reason = "framing"


class MessageTooLarge(ProtocolError):
    """The announced length exceeds the limit for this peer's trust level."""

    reason = "too_large"


class InvalidMessage(ProtocolError):
    """The payload is not a usable JSON-RPC message (bad JSON, not an object, too deep)."""

    reason = "invalid_message"


class TLSSetupError(RouterError):
    """Our own certificate, key or CA cannot be loaded or do not fit together."""


class DataDirError(RouterError):
    """The data directory cannot be written: a read-only file system or permissions.

    Checked once at start, before anything is written, so the node refuses with one line
    instead of failing half-way (the replay log, certificates and positions live there).
    """


class InvalidState(RouterError, AssertionError):
    """A method was called in a state where it makes no sense: a programming error."""
