"""Result writers: Graphite, InfluxDB and PostgreSQL, durable through backend outages.

The node hands every consumed ``event::CheckResult`` to ``WritersService.submit`` (a deque
append); a thread commits them once to the node's LMDB queue, which every writer reads
from its own position (``feed``, ``queue``; ``legacy`` empties the old per-writer
queues); a child process (``child``) runs one ``runner.WriterRunner`` per writer, which formats
(``formats``, ``perfdata``) and writes batches to its backend (``graphite``, ``influxdb``,
``postgresql``; the contract is ``base.WriterBackend``) and confirms the queue position
afterwards. docs/writers.md has the configuration, guarantees and metrics.

Only the light modules are imported here: the backends (aiohttp, asyncpg) load in the
child process through ``registry``.
"""

from __future__ import annotations

from router.features.writers.base import HAView, WriterBackend, WriterBackendError
from router.features.writers.service import WritersService

__all__ = ["HAView", "WriterBackend", "WriterBackendError", "WritersService"]
