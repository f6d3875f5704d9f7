"""What the kernel says about a transport's socket: its descriptor, its unread input.

Both answer "unknown" (-1, 0) for a transport that is gone or closing instead of
raising: the callers (the node's descriptor ceiling, its read-stall watchdog) ask about
thousands of connections, any of which may have closed meanwhile.
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios


def transport_fileno(transport: asyncio.BaseTransport | None) -> int:
    """The socket's descriptor (-1: none). The kernel hands out the lowest free one, so it
    tells how many are in use (``Sessions.connection_made`` refuses near the limit)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


def unread_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Input waiting in the kernel's receive buffer (FIONREAD; 0 when unknown)."""
    if transport is None or transport.is_closing():
        return 0
    fd = transport_fileno(transport)
    if fd < 0:
        return 0
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int.from_bytes(raw, sys.byteorder, signed=True)


__all__ = ["transport_fileno", "unread_bytes"]
