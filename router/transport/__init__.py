"""Transport: TLS contexts and sessions, peer connections, send queues, fair reading, dialling.

The asyncio glue between sockets and the sans-I/O protocol core; it knows nothing of routing.
What it needs from the node above it is stated in ``owner`` (``ConnectionOwner``,
``DialOwner``): the transport is typed against those and never imports the node.
"""

from __future__ import annotations

from router.transport.connection import (
    PeerConnection,
    READ_BUFFER_SIZE,
)
from router.transport.owner import (
    ConnectionOwner,
    DialOwner,
    RateLimitedLogger,
    TrafficStats,
)

__all__ = [
    "ConnectionOwner",
    "DialOwner",
    "PeerConnection",
    "RateLimitedLogger",
    "READ_BUFFER_SIZE",
    "TrafficStats",
]
