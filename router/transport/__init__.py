"""Transport: TLS contexts and sessions, peer connections, send queues, fair reading, dialling.

The asyncio glue between sockets and the sans-I/O protocol core; it knows nothing of routing.
"""

from __future__ import annotations

from router.transport.connection import (
    PeerConnection,
    READ_BUFFER_SIZE,
)

__all__ = [
    "PeerConnection",
    "READ_BUFFER_SIZE",
]
