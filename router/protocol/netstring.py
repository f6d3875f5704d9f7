"""Netstring framing of the Icinga 2 cluster protocol.

Every JSON-RPC message on a cluster connection is framed as ``<length>:<payload>,``
where ``<length>`` is the decimal byte length of the payload. The decoder below accepts
exactly what Icinga 2.13's coroutine reader (``NetString::ReadStringFromStream`` in
``lib/base/netstring.cpp``) accepts and refuses exactly what it refuses:

* only ASCII digits may precede ``:``; any other byte is an error ("missing :");
* ``:`` with no digit before it is an error ("no length specifier");
* a leading ``0`` followed by another digit is an error ("leading zero"), while the
  bare ``0:,`` (empty payload) is legal framing;
* a 10th digit is an error, so the hard ceiling is 999 999 999 bytes;
* the announced length is compared with the limit as soon as ``:`` is read, before any
  of the body is read, so a hostile peer cannot make us buffer a body we will refuse;
* the byte after the body must be ``,`` ("missing ,").

Icinga reads the prefix one byte at a time and therefore notices a bad prefix byte the
moment it arrives. This decoder works on whole reads instead (it sits on the hot path of
thousands of connections), but it validates an incomplete prefix on every ``feed`` so a
bad byte is reported as early as Icinga would report it, not only once a ``:`` turns up.
"""

from __future__ import annotations

from typing import Final

from router.errors import FramingError, MessageTooLarge

__all__ = ["MAX_LENGTH_DIGITS", "NetstringDecoder", "encode"]

MAX_LENGTH_DIGITS: Final = 9
"""Icinga: "Length specifier must not exceed 9 characters"."""

_COMMA: Final = 0x2C
_ZERO: Final = 0x30
_HEADER_WINDOW: Final = MAX_LENGTH_DIGITS + 1   # the longest legal prefix including its ':'


def encode(payload: bytes) -> bytes:
    """Frame ``payload`` as a netstring.

    Icinga's writers compute the length from the byte length of the encoded JSON, which
    is what ``len`` of a ``bytes`` object is.
    """
    return b"%d:%b," % (len(payload), payload)


def _is_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def _prefix_error(prefix: bytes | bytearray, complete: bool) -> FramingError | None:
    """Explain why ``prefix`` (the bytes before ``:``) is not a legal length prefix.

    Walks the (at most 10) prefix bytes in order, exactly as Icinga reads them one at a
    time, so that the first violation is the one reported. ``complete`` says whether a
    ``:`` followed ``prefix``; an incomplete prefix that is legal so far returns ``None``.
    Only called on the slow path: when the fast checks in the decoder already failed or
    while a prefix is still incomplete.
    """
    for index, byte in enumerate(prefix):
        if not _is_digit(byte):
            return FramingError(f"Invalid NetString (missing :): byte {bytes([byte])!r} "
                                f"in the length prefix")
        if index == MAX_LENGTH_DIGITS:
            return FramingError(f"Length specifier must not exceed {MAX_LENGTH_DIGITS} "
                                f"characters")
        if index == 1 and prefix[0] == _ZERO:
            return FramingError("Invalid NetString (leading zero)")
    if complete and not prefix:
        return FramingError("Invalid NetString (no length specifier)")
    return None


class NetstringDecoder:
    """Incremental netstring decoder: bytes in, complete payloads out.

    ``max_size`` is the largest payload accepted, in bytes. A negative value means "no
    limit but the 9-digit ceiling", which is what Icinga 2.13 applies to connections that
    have an Endpoint object (it passes ``-1``); anonymous connections get 1 MiB. The
    attribute is writable because the limit may change once the peer is identified; a
    new limit applies from the next header parsed (a frame whose body is still arriving
    is checked again against it when it completes).

    After a ``FramingError`` or ``MessageTooLarge`` the decoder stays failed: Icinga
    ends the read loop and disconnects, so there is no way to resynchronise and every
    later ``feed`` raises the same error class again.

    Performance notes (this runs for every byte every peer sends):

    * When nothing is buffered, frames are sliced straight out of ``data`` and only the
      trailing partial frame, if any, is copied into the buffer.
    * Otherwise ``data`` is appended to a ``bytearray`` and every complete frame is
      parsed in the same call; the consumed prefix is trimmed once per ``feed``, never
      once per frame, so a read holding many small frames stays O(n).
    * The ``:`` is located with ``find`` over a 10-byte window; the body is never
      scanned, only sliced, and its trailing ``,`` is checked by index.
    * While a large body is still arriving, ``feed`` only appends: the total length
      still needed is remembered, so the header is not parsed again for every read.
    """

    __slots__ = ("max_size", "_buffer", "_needed", "_failure")

    def __init__(self, max_size: int) -> None:
        self.max_size: int = max_size
        self._buffer = bytearray()
        self._needed = 0            # bytes the buffer must hold before a frame can complete
        self._failure: type[FramingError] | type[MessageTooLarge] | None = None

    @property
    def buffered(self) -> int:
        """Number of bytes held back because they do not form a complete frame yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every payload it completes, in order.

        Raises ``FramingError`` or ``MessageTooLarge`` when the stream is broken. Payloads
        that were complete before the broken frame in the same ``data`` are lost with
        the exception; a caller that must deliver them uses :meth:`feed_into`.
        """
        frames: list[bytes] = []
        self.feed_into(data, frames)
        return frames

    def feed_into(self, data: bytes, frames: list[bytes]) -> None:
        """Like :meth:`feed`, but append the payloads to ``frames`` as they are found.

        When a framing error is raised, ``frames`` already holds every payload that
        preceded the broken frame. Icinga handles each message before it reads the
        next one, so those earlier messages take effect before the disconnect; the peer
        state machine needs this to do the same.
        """
        if self._failure is not None:
            raise self._failure("netstring decoder already failed on this connection")
        if type(data) is not bytes:     # payloads handed out must be immutable bytes
            data = bytes(data)
        buffer = self._buffer
        try:
            if not buffer:
                consumed = self._parse(data, frames)
                if consumed < len(data):
                    buffer += memoryview(data)[consumed:]
                return
            buffer += data
            if len(buffer) < self._needed:
                return
            with memoryview(buffer) as view:
                consumed = self._parse(buffer, frames, view)
            if consumed:
                del buffer[:consumed]
        except (FramingError, MessageTooLarge) as error:
            self._failure = type(error)
            self._buffer = bytearray()
            self._needed = 0
            raise

    def _parse(self, buf: bytes | bytearray, frames: list[bytes],
               view: memoryview | None = None) -> int:
        """Append every complete payload in ``buf`` to ``frames``; return bytes consumed.

        ``view`` is a memoryview over ``buf`` when ``buf`` is the bytearray buffer:
        slicing it copies the payload once, where slicing the bytearray and converting
        to ``bytes`` would copy it twice.
        """
        size = len(buf)
        max_size = self.max_size
        pos = 0
        self._needed = 0
        while pos < size:
            colon = buf.find(b":", pos, pos + _HEADER_WINDOW)
            if colon < 0:
                self._check_partial_prefix(buf[pos:pos + _HEADER_WINDOW])
                return pos
            header = buf[pos:colon]
            if not header.isdigit() or (header[0] == _ZERO and len(header) > 1):
                raise _prefix_error(header, complete=True) or FramingError(
                    "Invalid NetString (bad length prefix)")
            length = int(header)
            if 0 <= max_size < length:
                raise MessageTooLarge(f"Max data length exceeded: {max_size // 1024} KB "
                                      f"(announced {length} bytes, limit {max_size})")
            end = colon + 1 + length
            if end >= size:
                self._needed = end + 1 - pos
                return pos
            if buf[end] != _COMMA:
                raise FramingError(f"Invalid NetString (missing ,): found "
                                   f"{bytes([buf[end]])!r} after a {length}-byte payload")
            if view is None:
                # ``buf`` is the caller's bytes whenever there is no view (feed_into).
                frames.append(buf[colon + 1:end])  # type: ignore[arg-type]
            else:
                frames.append(bytes(view[colon + 1:end]))
            pos = end + 1
        return pos

    @staticmethod
    def _check_partial_prefix(prefix: bytes | bytearray) -> None:
        """Fail early on a prefix that cannot become legal, however the stream goes on.

        ``prefix`` holds the bytes of an unfinished frame header with no ``:`` yet (at
        most 10 of them). Ten bytes without a ``:`` always fail: the 10th is either a
        digit too many or not a digit at all.
        """
        error = _prefix_error(prefix, complete=False)
        if error is not None:
            raise error
