"""The contract between the writer runner and one result backend (Graphite, InfluxDB, PostgreSQL).

Why a contract: the backends run in the writers' child process (``router.features.writers.child``),
away from the event loop that routes, and they are written by different people. The runner
(``runner.WriterRunner``) owns the durable queue, batching, retries with backoff, timeouts and
metrics; a backend only turns records into backend writes.

Records
-------
A record is the parsed ``params`` dict of one ``event::CheckResult`` exactly as on the wire:
``{"host": str, "service": str (absent or "" for a host check), "cr": {"state", "output",
"performance_data" (list of str, or str), "check_source", "command" (list or str),
"execution_start", "execution_end", "schedule_start", "schedule_end", "exit_status",
"active", "vars_after": {"state_type", "state", "attempt", "reachable"} (when present), ...}}``.
Backends must not trust any of it (a child sends what it wants): missing keys and wrong
types are the backend's to tolerate (skip the record and count it via ``count_error``).
Each record comes paired with its durable queue position (an ``int``, increasing).

Constructor (every backend class has exactly this signature)::

    Backend(spec: WriterSpec, node_name: str, ha: HAView, count_error: Callable[[str], None])

* ``spec``: the ``[[writers]]`` table as ``router.config.WriterSpec`` (frozen dataclass:
  ``name``, ``type``, ``flush_interval``, ``flush_threshold``, ``max_backlog_bytes``,
  ``max_backlog_age``, ``timeout``, and the type's options: graphite ``host``, ``port``,
  ``host_name_template``, ``service_name_template``, ``enable_send_thresholds``,
  ``enable_send_metadata``; influxdb ``url``, ``database``, ``username``, ``password``,
  ``host_template``, ``service_template``; postgresql ``dsn``, ``enable_ha``,
  ``failover_timeout``).
* ``node_name``: this node's endpoint name (the HA quorum's ``endpoint_name``).
* ``ha``: an ``HAView`` (below): our zone's endpoints and which of them are connected now.
* ``count_error(reason)``: count one error under ``router_writer_errors_total{writer,reason}``
  (``reason`` a short stable token such as ``"perfdata"``, ``"refused_row"``). Call it for each
  record or value skipped; the runner counts its own (``"connect"``, ``"timeout"``, ...).

Classes: ``graphite.GraphiteBackend``, ``influxdb.InfluxdbBackend``,
``postgresql.PostgresqlBackend`` (``registry.backend_class`` maps ``spec.type`` to them and
imports each lazily, so a node without PostgreSQL never imports asyncpg).

Calls (all on the child's event loop, never concurrently for one backend):
``open()`` once before the first ``write`` and again after a ``WriterBackendError``
(after ``close()``), retried with exponential backoff by the runner; ``write(batch)``
returns once the batch is durable in the backend, or raises ``WriterBackendError`` and the
whole batch is retried later (so writes must be idempotent: see docs/writers.md); the
runner bounds each call with ``spec.timeout`` and treats a timeout like a
``WriterBackendError("timeout")``. ``committed_position()`` is asked after ``open()``:
a backend that stores the queue position in the same transaction as the data (PostgreSQL)
returns it and the runner resumes after it; others return None and the queue's own stored
position is used. ``holds_role(now)`` is asked before each batch; False means "another node
of the zone writes": the runner then keeps the records, reports ``router_writer_active 0``
and asks again after ``min(spec.flush_interval, 1 s)``. ``close()`` must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from router.errors import RouterError

if TYPE_CHECKING:
    from router.config import WriterSpec

__all__ = ["Batch", "CountError", "HAView", "Record", "WriterBackend", "WriterBackendError",
           "BackendFactory"]

Record = Mapping[str, Any]
"""The ``params`` of one ``event::CheckResult``, as parsed from the wire."""
Batch = Sequence[tuple[int, Record]]
"""``(queue position, record)`` pairs in queue order."""
CountError = Callable[[str], None]
"""``count_error(reason)``: one more ``router_writer_errors_total{writer,reason}``."""


class WriterBackendError(RouterError):
    """The backend failed (unreachable, refused the batch, timed out): retry later.

    ``reason`` is a short stable token for ``router_writer_errors_total{reason}``
    (``connect``, ``timeout``, ``http_500``, ``refused``, ...); the message is for the log.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or reason)


class HAView(Protocol):
    """What a backend may know about its HA zone (the runner keeps it current).

    The writers' process learns the node's connected set over its control pipe, so
    ``connected_peers`` is at most a fraction of a second behind the node.
    """

    @property
    def node_name(self) -> str:
        """This node's endpoint name."""

    @property
    def zone_endpoints(self) -> tuple[str, ...]:
        """All endpoints of this node's zone, this node included, sorted by name."""

    def connected_peers(self) -> frozenset[str]:
        """The other endpoints of our zone that have a live session with this node now."""


class WriterBackend(Protocol):
    """One result backend (see the module docstring for the call contract)."""

    name: str
    """The writer's name (``[[writers]] name``), used in logs and metric labels."""

    async def open(self) -> None:
        """Connect / prepare (create tables, check the database); may raise
        ``WriterBackendError`` (retried with backoff)."""

    async def write(self, batch: Batch) -> int | None:
        """Make ``batch`` durable in the backend, or raise ``WriterBackendError``.

        A single record the backend refuses is logged, counted with ``count_error`` and
        skipped: it must not block the queue forever. Returns how many records were
        skipped so (not counted as written), or None for none."""

    async def committed_position(self) -> int | None:
        """The queue position the backend stored with the data, or None."""

    async def holds_role(self, now: float) -> bool:
        """HA: may this node write now? (Always True for Graphite and InfluxDB.)"""

    async def close(self) -> None:
        """Release connections; never raises."""


BackendFactory = Callable[["WriterSpec", str, HAView, CountError], WriterBackend]
"""A backend class, seen as the constructor signature above."""
