"""The PostgreSQL writer's tables and their migrations, applied in order by version.

Why versioned migrations instead of ``CREATE TABLE IF NOT EXISTS``: the tables outlive the
router version that created them; a later version that adds a column or an index must find
out what the database already has. ``schema_version`` keeps one row per migration applied
(version, description, when); :func:`migrate` applies the missing ones in order, all of them
and their ``schema_version`` rows in one transaction (PostgreSQL's DDL is transactional), so a
crash mid-migration leaves the database as it was and the next start simply retries.

Two nodes of an HA zone start at the same time against an empty database: both would run
``CREATE TABLE``. A transaction-scoped advisory lock serialises them; the second one finds
the tables created and the versions recorded.

A database *newer* than this code (a downgrade) is refused rather than written to: the
columns this code writes may have changed meaning.

The tables (docs/writers.md, "PostgreSQL"):

- ``checkable_state``: one row per host/service (``service`` is ``''`` for a host check);
  the latest result by ``execution_end``, never replaced by an older one.
- ``state_history``: one row per state change (state or state type differs from the row
  in ``checkable_state`` before the result), with the previous state.
- ``writer_instance``: the HA quorum, one row per writer name: which endpoint writes
  (``endpoint_name``) and its last ``heartbeat_at`` (the database's clock).
- ``writer_position``: the durable queue position written in the same transaction as the
  rows, per writer *and* endpoint (each node has its own queue, so its own positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MIGRATIONS", "Migration", "SchemaTooNew", "current_version", "migrate"]

#: ``pg_advisory_xact_lock`` key of the migration lock (any constant; "router-pg" in ASCII).
_MIGRATION_LOCK = 0x726F757465722D7067 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "checkable state, state history, HA quorum", (
        """CREATE TABLE checkable_state (
               host          text        NOT NULL,
               service       text        NOT NULL DEFAULT '',
               state         smallint    NOT NULL,
               state_type    smallint,
               output        text        NOT NULL DEFAULT '',
               perfdata      text        NOT NULL DEFAULT '',
               check_source  text        NOT NULL DEFAULT '',
               execution_end timestamptz NOT NULL,
               updated_at    timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (host, service))""",
        """CREATE TABLE state_history (
               id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               host                text        NOT NULL,
               service             text        NOT NULL DEFAULT '',
               state               smallint    NOT NULL,
               state_type          smallint,
               previous_state      smallint,
               previous_state_type smallint,
               output              text        NOT NULL DEFAULT '',
               check_source        text        NOT NULL DEFAULT '',
               execution_end       timestamptz NOT NULL,
               written_at          timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE writer_instance (
               writer_name   text        PRIMARY KEY,
               endpoint_name text        NOT NULL,
               heartbeat_at  timestamptz NOT NULL,
               active_since  timestamptz NOT NULL)""",
    )),
    Migration(2, "queue position per writer and endpoint; history by checkable and time", (
        """CREATE TABLE writer_position (
               writer_name   text        NOT NULL,
               endpoint_name text        NOT NULL,
               position      bigint      NOT NULL,
               updated_at    timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (writer_name, endpoint_name))""",
        """CREATE INDEX state_history_checkable_time
               ON state_history (host, service, execution_end)""",
    )),
)
"""Every migration, oldest first; versions are 1, 2, ... without gaps. Never edit one that
has shipped: add the next."""

LATEST = MIGRATIONS[-1].version


class SchemaTooNew(Exception):
    """The database has a schema version this code doesn't know (a downgrade)."""

    def __init__(self, found: int) -> None:
        self.found = found
        super().__init__(f"database schema version {found} is newer than this router's "
                         f"{LATEST}: upgrade the router or use another database")


_CREATE_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version     integer     PRIMARY KEY,
        description text        NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now())"""


async def current_version(conn: Any) -> int:
    """The highest version recorded, 0 for a database without our tables."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    found = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(found)


async def migrate(conn: Any, target: int = LATEST) -> tuple[int, int]:
    """Bring the database up to ``target``; returns (version found, version now).

    ``conn`` is an asyncpg connection outside a transaction. Raises :class:`SchemaTooNew`
    for a database ahead of this code, asyncpg errors for the rest (the caller maps them).
    ``target`` below the latest exists for tests that start from an older schema.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        found = await current_version(conn)
        if found == 0:
            await conn.execute(_CREATE_VERSION_TABLE)
        if found > LATEST:
            raise SchemaTooNew(found)
        for migration in MIGRATIONS:
            if found < migration.version <= target:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                    migration.version, migration.description)
        now = max(found, min(target, LATEST))
    return found, now
