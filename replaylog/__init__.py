"""The replay log: messages for disconnected peers, kept in LMDB until they come back.

``ReplayStore`` is the synchronous store (``replaylog.store``), ``ReplayWriter`` the one
writer thread with group commit that the event loop submits to (``replaylog.writer``).
See ``replaylog/README.md`` for the durability window and the recovery command.
"""

from .errors import (
                     ReplayLogBusy,
                     ReplayLogCorrupt,
                     ReplayLogDiskFull,
                     ReplayLogError,
                     recovery_command,
)
from .store import (
                     DEFAULT_LOG_DURATION,
                     DEFAULT_MAP_SIZE,
                     DEFAULT_MAX_BYTES,
                     PruneStats,
                     Record,
                     ReplayStore,
                     reset,
)
from .received import ReceivedPositions
from .writer import ReplayWriter

__all__ = [
    "DEFAULT_LOG_DURATION", "DEFAULT_MAP_SIZE", "DEFAULT_MAX_BYTES", "PruneStats", "Record",
    "ReceivedPositions", "ReplayLogBusy", "ReplayLogCorrupt", "ReplayLogDiskFull", "ReplayLogError",
    "ReplayStore", "ReplayWriter", "recovery_command", "reset",
]
