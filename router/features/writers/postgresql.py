"""The PostgreSQL state writer: latest state per checkable, state history, HA quorum.

Theory of operation
-------------------
Each batch is one transaction (READ COMMITTED)::

    BEGIN
    UPDATE writer_instance ... WHERE writer_name = me AND endpoint_name = my node  -- fence
    SAVEPOINT batch
      SELECT ... FROM checkable_state WHERE (host, service) IN batch FOR UPDATE
      INSERT INTO state_history ...        -- the results whose state differs from the row's
      INSERT INTO checkable_state ... ON CONFLICT DO UPDATE ... WHERE execution_end <= new
    RELEASE SAVEPOINT batch
    INSERT INTO writer_position ...        -- the queue position, with the rows
    COMMIT

*Durable with the position*: the rows and the queue position commit together, so after a
crash ``committed_position()`` tells the runner exactly where to resume: a batch is either
wholly in the database with its position or not at all (issue 19: nothing doubled, nothing
lost).

*Never backwards*: a result older than the stored one (by ``execution_end``) changes
neither ``checkable_state`` nor ``state_history``; replaying results the database already
has is therefore harmless (a passive node taking over writes its own backlog).

*A row PostgreSQL refuses* (a NUL byte in the output, a value out of range: SQLSTATE
classes 22 and 23) must not block the queue: the batch savepoint is rolled back and the
batch is applied again one result per savepoint; the refused ones are logged, counted
(``refused_row``) and skipped, the rest commits. Records that aren't check results at all
are counted as ``bad_record`` before anything is sent.

HA (``enable_ha``, Icinga's DB IDO rule, lib/db_ido*/: a writer writes only while the
``programstatus`` row names its endpoint or that row's update is older than
``failover_timeout``). Differences, on purpose:

- The claim is one atomic statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE
  endpoint_name = me OR heartbeat_at < clock_timestamp() - failover_timeout``): PostgreSQL
  locks the row and evaluates the condition on its latest version, so two nodes in a split
  brain can never both win. The IDO reads, then writes, with each node's own clock.
- Ages are measured with the *database's* clock only; the nodes' clocks may disagree.
- Every batch re-checks the role inside its own transaction (the fence above, which also
  takes the row lock a takeover needs): a node that lost the role while hung or
  partitioned cannot write afterwards, even if it doesn't know yet.
- Locally the role is a lease: it counts as held until ``failover_timeout`` after the
  claim was *sent* (monotonic clock), which ends before any other node can claim it.
- On a connected HA pair Icinga's object authority decides who may claim
  (``candidates[SDBM(writer name) % n]`` of the connected zone endpoints and us, sorted).
  A node that loses authority releases the role (its heartbeat set to the epoch) so the
  authoritative peer takes over at its next check instead of after ``failover_timeout``.
  Icinga's 30 s cold-start pause is not applied: the database quorum already prevents two
  writers, and waiting would only delay the first write.

The active node renews its heartbeat every ``failover_timeout / 4`` (a background task, and
every batch's fence); a passive one re-checks at the same pace and takes over at most
``failover_timeout`` plus one interval after the active one's last heartbeat. A graceful
``close()`` does not release the role (as the IDO): a node that restarts within
``failover_timeout`` keeps writing without a hand-over.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from router.features.scheduler import sdbm
from router.features.writers.base import (
    Batch,
    CountError,
    HAView,
    Record,
    WriterBackendError,
)
from router.features.writers.formats import result_view
from router.features.writers.postgresql_schema import SchemaTooNew, migrate

if TYPE_CHECKING:
    from router.config import WriterSpec

__all__ = ["CurrentState", "PostgresqlBackend", "StateRow", "state_changes", "state_row"]

log = logging.getLogger(__name__)

#: Refused rows and bad records logged one by one per batch; the rest only as a count.
_LOGGED_REFUSALS = 10
_SMALLINT = range(-32768, 32768)

#: A released role (heartbeat at the epoch) is not renewed by a batch that was under way
#: when authority moved: the peer may claim it at once (review: it waited out a whole
#: failover_timeout).
_FENCE_SQL = """
    UPDATE writer_instance SET heartbeat_at = clock_timestamp()
     WHERE writer_name = $1 AND endpoint_name = $2 AND heartbeat_at > to_timestamp(0)
    RETURNING 1"""

_CLAIM_SQL = """
    WITH previous AS (
        SELECT endpoint_name, extract(epoch FROM clock_timestamp() - heartbeat_at) AS age,
               heartbeat_at = to_timestamp(0) AS released
          FROM writer_instance WHERE writer_name = $1)
    INSERT INTO writer_instance AS w (writer_name, endpoint_name, heartbeat_at, active_since)
    VALUES ($1, $2, clock_timestamp(), clock_timestamp())
    ON CONFLICT (writer_name) DO UPDATE
       SET endpoint_name = EXCLUDED.endpoint_name,
           heartbeat_at = EXCLUDED.heartbeat_at,
           active_since = CASE WHEN w.endpoint_name = EXCLUDED.endpoint_name
                               THEN w.active_since ELSE EXCLUDED.active_since END
     WHERE w.endpoint_name = EXCLUDED.endpoint_name
        OR w.heartbeat_at < clock_timestamp() - make_interval(secs => $3)
    RETURNING (SELECT endpoint_name FROM previous) AS previous_endpoint,
              (SELECT age FROM previous)::float8 AS previous_age,
              (SELECT released FROM previous) AS previous_released"""

_HOLDER_SQL = """
    SELECT endpoint_name, extract(epoch FROM clock_timestamp() - heartbeat_at)::float8 AS age
      FROM writer_instance WHERE writer_name = $1"""

_RELEASE_SQL = """
    UPDATE writer_instance SET heartbeat_at = to_timestamp(0)
     WHERE writer_name = $1 AND endpoint_name = $2"""

_LOCK_STATE_SQL = """
    SELECT c.host, c.service, c.state, c.state_type, c.execution_end
      FROM checkable_state c
      JOIN unnest($1::text[], $2::text[]) AS k(host, service)
        ON c.host = k.host AND c.service = k.service
     ORDER BY c.host, c.service
       FOR UPDATE OF c"""

_HISTORY_SQL = """
    INSERT INTO state_history (host, service, state, state_type, previous_state,
                               previous_state_type, output, check_source, execution_end)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::int2[], $5::int2[],
                         $6::int2[], $7::text[], $8::text[], $9::timestamptz[])"""

_UPSERT_SQL = """
    INSERT INTO checkable_state AS c (host, service, state, state_type, output, perfdata,
                                      check_source, execution_end, updated_at)
    SELECT u.*, now() FROM unnest($1::text[], $2::text[], $3::int2[], $4::int2[], $5::text[],
                                  $6::text[], $7::text[], $8::timestamptz[]) AS u
    ON CONFLICT (host, service) DO UPDATE
       SET state = EXCLUDED.state, state_type = EXCLUDED.state_type,
           output = EXCLUDED.output, perfdata = EXCLUDED.perfdata,
           check_source = EXCLUDED.check_source, execution_end = EXCLUDED.execution_end,
           updated_at = EXCLUDED.updated_at
     WHERE c.execution_end <= EXCLUDED.execution_end"""

_POSITION_SQL = """
    INSERT INTO writer_position (writer_name, endpoint_name, position, updated_at)
    VALUES ($1, $2, $3, now())
    ON CONFLICT (writer_name, endpoint_name) DO UPDATE
       SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at"""

_READ_POSITION_SQL = """
    SELECT position FROM writer_position WHERE writer_name = $1 AND endpoint_name = $2"""


class _BadRecord(ValueError):
    """A record that isn't a usable check result (never sent to PostgreSQL)."""


class _RoleLost(Exception):
    """The fence found another endpoint named in ``writer_instance``."""


@dataclass(frozen=True, slots=True)
class StateRow:
    """One check result as the columns it becomes."""

    position: int
    host: str
    service: str
    state: int
    state_type: int | None
    output: str
    perfdata: str
    check_source: str
    execution_end: datetime

    @property
    def key(self) -> tuple[str, str]:
        return self.host, self.service

    def describe(self) -> str:
        return f"{self.host}!{self.service}" if self.service else self.host


def _small_int(value: object, what: str) -> int:
    # type() rather than isinstance(): bool is not a state, and this runs per result.
    if type(value) is int and value in _SMALLINT:
        return value
    if type(value) is float and value.is_integer() and int(value) in _SMALLINT:
        return int(value)
    raise _BadRecord(f"{what} {value!r} is not a small integer")


def _perfdata_text(raw: object) -> str:
    """``performance_data`` as the plugin's text (what the IDO stores): list items joined by
    a space, serialised ``PerfdataValue`` objects in Icinga's ``label=value[unit];warn;crit;
    min;max`` form. Stored as is; parsing it is for the readers."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        return ""
    parts: list[str] = []
    for item in raw:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("label"), str):
            label = item["label"]
            label = f"'{label}'" if " " in label or "=" in label else label
            unit = item.get("unit") if isinstance(item.get("unit"), str) else ""
            fields = [f"{item.get('value', '')}{unit}"] + [
                "" if item.get(k) is None else str(item.get(k))
                for k in ("warn", "crit", "min", "max")]
            while len(fields) > 1 and fields[-1] == "":
                fields.pop()
            parts.append(f"{label}={';'.join(fields)}")
    return " ".join(parts)


def state_row(position: int, record: Record) -> StateRow:
    """The columns of one record; raises ``ValueError`` for a record that isn't a usable
    check result (no host, no ``cr``, no finite ``execution_end``, state not a number).

    Host checks: ``service`` is ``''`` and the state is the host state Icinga derives from
    the plugin state (``Host::CalculateState``: OK and WARNING are UP (0), anything else
    DOWN (1)), as the IDO's ``hoststatus`` holds it."""
    view = result_view(record)
    if view is None:
        raise _BadRecord("not a check result (host, cr or execution_end missing)")
    cr = view.cr
    state = _small_int(cr.get("state"), "state")
    if view.service is None:
        state = 0 if state in (0, 1) else 1
    after = cr.get("vars_after")
    raw_type = after.get("state_type") if isinstance(after, dict) else None
    state_type = None if raw_type is None else _small_int(raw_type, "state_type")
    output = cr.get("output")
    source = cr.get("check_source")
    try:
        end = datetime.fromtimestamp(view.execution_end, UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise _BadRecord(f"execution_end {view.execution_end!r}: {e}") from None
    return StateRow(
        position=position, host=view.host, service=view.service or "", state=state,
        state_type=state_type,
        output=output if isinstance(output, str) else "" if output is None else str(output),
        perfdata=_perfdata_text(cr.get("performance_data")),
        check_source=source if isinstance(source, str) else "",
        execution_end=end)


def _row_refused(exc: BaseException) -> bool:
    """Whether PostgreSQL (or asyncpg, before sending) refused the *data*, not the
    connection or the transaction: SQLSTATE class 22 (data exception), 23 (integrity) or
    54 (a program limit: a host or service name too long for an index row, 54000, used
    to block the queue for good), or asyncpg's client-side ``DataError`` (an
    ``InterfaceError`` that is a ``ValueError``: a string Python can't encode, an integer
    too large for its column)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in ("22", "23", "54")
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows to per-column lists, the arguments of an ``unnest(...)`` insert."""
    return [list(column) for column in zip(*rows, strict=True)]


CurrentState = tuple[int, int | None, datetime]
"""A checkable's stored ``(state, state_type, execution_end)``."""


def state_changes(rows: Sequence[StateRow],
                  current: dict[tuple[str, str], CurrentState]
                  ) -> tuple[list[list[Any]], list[list[Any]]]:
    """The ``unnest`` arguments of the history insert and of the upsert for ``rows``, given
    the stored state of their checkables (``current``, updated in place); either is empty
    when there is nothing to send. Pure, so its cost can be measured without a database.

    A row older than the stored one (``execution_end``) changes nothing: never backwards.
    The upsert is in key order, as the rows were locked: concurrent writers
    (``enable_ha = false``) inserting the same new checkables then mostly wait for each
    other; a deadlock PostgreSQL detects is a "database" error and the batch is retried."""
    history: list[tuple[Any, ...]] = []
    latest: dict[tuple[str, str], StateRow] = {}
    for row in rows:
        before = current.get(row.key)
        if before is not None and row.execution_end < before[2]:
            continue  # older than what the database has: never backwards
        if before is None or (row.state, row.state_type) != before[:2]:
            history.append((row.host, row.service, row.state, row.state_type,
                            None if before is None else before[0],
                            None if before is None else before[1],
                            row.output, row.check_source, row.execution_end))
        current[row.key] = (row.state, row.state_type, row.execution_end)
        latest[row.key] = row
    upsert = [(r.host, r.service, r.state, r.state_type, r.output, r.perfdata,
               r.check_source, r.execution_end) for _, r in sorted(latest.items())]
    return (_columns(history) if history else [], _columns(upsert) if upsert else [])


class PostgresqlBackend:
    """``[[writers]] type = "postgresql"`` (see the module docstring and docs/writers.md)."""

    def __init__(self, spec: WriterSpec, node_name: str, ha: HAView,
                 count_error: CountError) -> None:
        self.name = spec.name
        self._dsn = spec.dsn or ""
        self._node = node_name
        self._ha = ha
        self._count_error = count_error
        self._enable_ha = spec.enable_ha
        self._timeout = spec.timeout
        self._failover_timeout = spec.failover_timeout
        #: How often the active node renews and a passive one re-checks the role.
        self.heartbeat_interval = max(spec.failover_timeout / 4, 0.05)
        self._conn: Any = None
        #: One statement at a time on the connection (the heartbeat task vs the runner).
        self._lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._active = False
        #: Monotonic time until which the claimed role is ours (see "lease" above).
        self._lease_until = 0.0
        self._checked_at = -math.inf
        #: Who held the role at the last check (for the transition logs).
        self._holder: str | None = None

    # -- the role ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether this node may write now (``router_writer_active``); always True without HA."""
        if not self._enable_ha:
            return True
        return self._active and time.monotonic() < self._lease_until

    def authoritative(self) -> bool:
        """Icinga's object authority for this writer among the connected zone endpoints."""
        zone = self._ha.zone_endpoints
        if len(zone) <= 1:
            return True
        peers = self._ha.connected_peers()
        candidates = sorted({self._node, *(p for p in peers if p in zone)})
        return candidates[sdbm(self.name) % len(candidates)] == self._node

    async def holds_role(self, now: float) -> bool:
        """May this node write now? Asks the database when the last check is older than
        one heartbeat interval or the authority moved; otherwise answers from the lease.
        Never raises: a database it can't reach means "not now".

        ``now`` (the runner's clock) is not used: ages in the quorum are the database's,
        the lease is on this process's monotonic clock."""
        if not self._enable_ha:
            return True
        due = time.monotonic() - self._checked_at >= self.heartbeat_interval
        if due or (self._active and (not self.active or not self.authoritative())):
            await self._refresh_role()
        return self.active

    def _set_role(self, active: bool, why: str) -> None:
        if active != self._active:
            if active:
                log.info("writer %s: endpoint %s now writes to PostgreSQL (%s)",
                         self.name, self._node, why)
            else:
                log.warning("writer %s: endpoint %s stops writing to PostgreSQL: %s",
                            self.name, self._node, why)
        self._active = active

    async def _refresh_role(self) -> None:
        """One quorum round trip: renew or claim the role, or learn who holds it."""
        async with self._lock:
            try:
                await self._refresh_role_locked()
            finally:
                # After the round trip, so a holds_role() during a refresh waits for it.
                self._checked_at = time.monotonic()

    async def _refresh_role_locked(self) -> None:
        if not self.authoritative():
            await self._release_locked()
            return
        conn = await self._connection_for_role()
        if conn is None:
            return
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                claimed = await conn.fetchrow(_CLAIM_SQL, self.name, self._node,
                                              float(self._failover_timeout))
                holder = None if claimed else await conn.fetchrow(_HOLDER_SQL, self.name)
        except asyncio.CancelledError:
            self._abandon(conn)
            raise
        except Exception as e:  # noqa: BLE001 - any failure means "can't hold it now"
            self._abandon(conn, _describe(e))
            return
        if claimed is not None:
            self._lease_until = sent + self._failover_timeout
            previous, age = claimed["previous_endpoint"], claimed["previous_age"]
            if previous is None:
                why = "first writer of this name"
            elif previous == self._node:
                why = "the database already named it"
            elif claimed["previous_released"]:
                why = f"took over from {previous}, which released it"
            else:
                why = (f"took over from {previous}, whose last heartbeat was "
                       f"{float(age):.1f}s ago, past failover_timeout "
                       f"{self._failover_timeout:g}s")
            self._holder = self._node
            self._set_role(True, why)
        else:
            name = holder["endpoint_name"] if holder else "?"
            age = float(holder["age"]) if holder else math.nan
            if name != self._holder or self._active:
                log.info("writer %s: endpoint %s holds the PostgreSQL role (heartbeat "
                         "%.1fs ago); %s waits", self.name, name, age, self._node)
            self._holder = name
            self._set_role(False, f"{name} holds the role")

    async def _connection_for_role(self) -> Any:
        """The connection, reconnecting if it was lost (a passive node has no writes that
        would make the runner reopen it); None (and passive) when the database is away."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        try:
            self._conn = await self._connect()
        except WriterBackendError as e:
            self._set_role(False, str(e))
            return None
        return self._conn

    async def _release_locked(self) -> None:
        """Authority moved to a connected peer: stop, and let it claim the role at once."""
        was_active = self._active
        self._set_role(False, "Icinga's object authority moved to a connected zone peer")
        if not was_active and self._holder != self._node:
            return
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        try:
            async with asyncio.timeout(self._timeout):
                await conn.execute(_RELEASE_SQL, self.name, self._node)
            self._holder = None
        except asyncio.CancelledError:
            self._abandon(conn)
            raise
        except Exception as e:  # noqa: BLE001 - the peer then waits for failover_timeout
            self._abandon(conn)
            log.warning("writer %s: could not release the role: %s", self.name, _describe(e))

    async def _keep_role(self) -> None:
        """Background: renew (active) or re-check (passive) every heartbeat interval."""
        while True:
            try:
                await self._refresh_role()
            except Exception:  # noqa: BLE001 - a bug here must not end the heartbeats
                log.exception("writer %s: checking the HA role failed", self.name)
            await asyncio.sleep(self.heartbeat_interval)

    # -- connection -------------------------------------------------------------------

    async def _connect(self) -> Any:
        try:
            conn = await asyncpg.connect(
                self._dsn, timeout=self._timeout, command_timeout=self._timeout,
                server_settings=self._server_settings())
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                ValueError) as e:
            raise WriterBackendError(
                "connect", f"cannot connect to PostgreSQL: {_describe(e)}") from None
        try:
            async with asyncio.timeout(self._timeout):
                found, now = await migrate(conn)
        except SchemaTooNew as e:
            conn.terminate()
            raise WriterBackendError("schema", str(e)) from None
        except TimeoutError:
            conn.terminate()
            raise WriterBackendError("timeout", "creating or migrating the tables timed out") \
                from None
        except BaseException as e:
            conn.terminate()
            if isinstance(e, Exception):
                raise WriterBackendError(
                    "schema", f"creating or migrating the tables: {_describe(e)}") from None
            raise
        if now != found:
            log.info("writer %s: PostgreSQL schema migrated from version %d to %d",
                     self.name, found, now)
        return conn

    def _server_settings(self) -> dict[str, str]:
        """Limits the server enforces itself. A node cut off in the middle of a batch
        (a partition, a frozen VM) left its transaction open on the server, holding the
        ``writer_instance`` row (the fence) until TCP keepalive gave up, about two hours:
        no other endpoint could take the role, and each of their claims stayed behind,
        waiting on the lock (review). Now the server ends such a transaction well within
        ``failover_timeout``, and a statement waiting for a lock gives up after
        ``timeout``."""
        idle = min(self._timeout, self._failover_timeout / 2)
        return {"application_name": f"router {self._node} {self.name}",
                "idle_in_transaction_session_timeout": str(max(1, int(idle * 1000))),
                "lock_timeout": str(max(1, int(self._timeout * 1000))),
                "statement_timeout": str(max(1, int(self._timeout * 1000)))}

    def _abandon(self, conn: Any, why: str = "cancelled") -> None:
        """Drop a connection in an unknown state (timed out, broken, cancelled mid-query):
        the server rolls its transaction back when it notices."""
        conn.terminate()
        if self._conn is conn:
            self._conn = None
        if self._enable_ha:
            self._set_role(False, f"lost the database connection ({why})")

    def _require_connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise WriterBackendError("connection_lost", "no connection to PostgreSQL")
        return conn

    async def open(self) -> None:
        """Connect, create or migrate the tables, start keeping the HA role."""
        async with self._lock:
            if self._conn is not None:
                self._abandon(self._conn)
            self._conn = await self._connect()
        if self._enable_ha and (self._heartbeat is None or self._heartbeat.done()):
            self._heartbeat = asyncio.create_task(self._keep_role(),
                                                  name=f"writer {self.name} heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat and close the connection; never raises. Doesn't release the
        role (a quick restart keeps it, as the IDO's)."""
        self._active = False  # first: a heartbeat cancelled mid-query logs no "lost"
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled, or it had failed: both fine
                pass
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with asyncio.timeout(min(self._timeout, 5.0)):
                await conn.close()
        except BaseException:  # noqa: BLE001 - close() must not raise
            conn.terminate()

    # -- writing ----------------------------------------------------------------------

    async def committed_position(self) -> int | None:
        """The queue position stored with the last committed batch of this endpoint."""
        async with self._lock:
            conn = self._require_connection()
            try:
                async with asyncio.timeout(self._timeout):
                    value = await conn.fetchval(_READ_POSITION_SQL, self.name, self._node)
            except asyncio.CancelledError:
                self._abandon(conn)
                raise
            except Exception as e:  # noqa: BLE001 - mapped to the backend error
                raise self._failure(conn, e, "reading the stored position") from None
        return None if value is None else int(value)

    def _failure(self, conn: Any, exc: Exception, what: str) -> WriterBackendError:
        """The backend error for a failed statement outside a transaction; drops the
        connection unless PostgreSQL answered and the connection is still usable."""
        if isinstance(exc, TimeoutError):
            self._abandon(conn)
            return WriterBackendError("timeout", f"{what}: no answer within {self._timeout:g}s")
        if isinstance(exc, asyncpg.PostgresError) and not conn.is_closed():
            return WriterBackendError("database", f"{what}: {_describe(exc)}")
        self._abandon(conn)
        return WriterBackendError("connection_lost", f"{what}: {_describe(exc)}")

    async def write(self, batch: Batch) -> int:
        """Commit ``batch`` and its last position in one transaction (module docstring).
        How many of its results were skipped (not check results, or refused rows)."""
        if not batch:
            return 0
        # Skipped records are counted once the batch committed: a batch retried after a
        # failure must not count its bad records twice.
        skipped: list[str] = []
        rows = self._rows(batch, skipped)
        async with self._lock:
            conn = self._require_connection()
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._transaction(conn, rows, max(p for p, _ in batch), skipped)
            except WriterBackendError:
                raise
            except _RoleLost:
                await self._rollback(conn)
                self._set_role(False, "another endpoint holds the role (fenced write)")
                raise WriterBackendError(
                    "role_lost", f"endpoint {self._node} no longer holds the role: batch "
                    "not written") from None
            except asyncio.CancelledError:
                self._abandon(conn)
                raise
            except TimeoutError:
                self._abandon(conn)
                raise WriterBackendError(
                    "timeout", f"PostgreSQL did not commit within {self._timeout:g}s") from None
            except asyncpg.PostgresError as e:
                if conn.is_closed():
                    self._abandon(conn)
                    raise WriterBackendError("connection_lost", _describe(e)) from None
                await self._rollback(conn)
                raise WriterBackendError(
                    "database", f"PostgreSQL refused the batch: {_describe(e)}") from None
            except Exception as e:  # noqa: BLE001 - OSError, asyncpg.InterfaceError, ...
                self._abandon(conn)
                raise WriterBackendError("connection_lost", _describe(e)) from None
        if self._enable_ha:
            # The fence renewed the heartbeat in the committed transaction.
            self._lease_until = sent + self._failover_timeout
        for reason in skipped:
            self._count_error(reason)
        return len(skipped)

    def _rows(self, batch: Batch, skipped: list[str]) -> list[StateRow]:
        rows = []
        for position, record in batch:
            try:
                rows.append(state_row(position, record))
            except ValueError as e:
                skipped.append("bad_record")
                if len(skipped) <= _LOGGED_REFUSALS:
                    log.warning("writer %s: skipped queue record %d: %s", self.name,
                                position, e)
        if len(skipped) > _LOGGED_REFUSALS:
            log.warning("writer %s: skipped %d records of one batch that are not check "
                        "results", self.name, len(skipped))
        return rows

    async def _transaction(self, conn: Any, rows: list[StateRow], position: int,
                           skipped: list[str]) -> None:
        await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        if self._enable_ha and await conn.fetchval(_FENCE_SQL, self.name, self._node) is None:
            raise _RoleLost
        if rows:
            await conn.execute("SAVEPOINT batch")
            try:
                await self._apply(conn, rows)
            except Exception as e:  # noqa: BLE001 - sorted by _row_refused
                if not _row_refused(e):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT batch")
                await self._apply_one_by_one(conn, rows, skipped)
            else:
                await conn.execute("RELEASE SAVEPOINT batch")
        await conn.execute(_POSITION_SQL, self.name, self._node, position)
        status = await conn.execute("COMMIT")
        if status != "COMMIT":  # PostgreSQL answers ROLLBACK to COMMIT of a failed transaction
            raise WriterBackendError("database", f"COMMIT answered {status!r}")

    async def _apply_one_by_one(self, conn: Any, rows: list[StateRow],
                                skipped: list[str]) -> None:
        """Isolate the rows PostgreSQL refuses: one savepoint per result."""
        refused = 0
        for row in rows:
            await conn.execute("SAVEPOINT one")
            try:
                await self._apply(conn, [row])
            except Exception as e:  # noqa: BLE001 - sorted by _row_refused
                if not _row_refused(e):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT one")
                refused += 1
                skipped.append("refused_row")
                if refused <= _LOGGED_REFUSALS:
                    log.warning("writer %s: PostgreSQL refused the result of %s (queue "
                                "position %d), skipped: %s", self.name, row.describe(),
                                row.position, _describe(e))
            else:
                await conn.execute("RELEASE SAVEPOINT one")
        if refused > _LOGGED_REFUSALS:
            log.warning("writer %s: PostgreSQL refused %d results of one batch, skipped",
                        self.name, refused)

    @staticmethod
    async def _apply(conn: Any, rows: list[StateRow]) -> None:
        """Upsert the newest state per checkable and insert one history row per change,
        comparing with the locked current rows (so concurrent writers serialise)."""
        keys = sorted({row.key for row in rows})
        current: dict[tuple[str, str], CurrentState] = {
            (r["host"], r["service"]): (r["state"], r["state_type"], r["execution_end"])
            for r in await conn.fetch(_LOCK_STATE_SQL, [k[0] for k in keys],
                                      [k[1] for k in keys])}
        history, upsert = state_changes(rows, current)
        if history:
            await conn.execute(_HISTORY_SQL, *history)
        if upsert:
            await conn.execute(_UPSERT_SQL, *upsert)

    async def _rollback(self, conn: Any) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await conn.execute("ROLLBACK")
        except asyncio.CancelledError:
            self._abandon(conn)
            raise
        except Exception:  # noqa: BLE001 - the connection is useless then
            self._abandon(conn)


def _describe(exc: BaseException) -> str:
    """An exception for a log line, with the SQLSTATE when PostgreSQL sent one."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc) or type(exc).__name__
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text
