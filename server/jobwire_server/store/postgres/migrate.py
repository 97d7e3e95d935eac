"""The migration step of the PostgreSQL store: `jobwire_schema` against `schema.MIGRATIONS`.

`PostgresJobStore.open` runs `migrate` on its writer connection; `jobwire migrate` runs it on a
connection of its own (`admin.connect`). Replicas and the command may start together: whoever takes
the advisory lock first migrates, the others then find the work done.
"""

from __future__ import annotations

import asyncpg

from jobwire_server.domain.errors import SchemaTooNew
from jobwire_server.store.postgres.schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION

Conn = asyncpg.Connection


async def schema_version(conn: Conn) -> int:
    """The last migration applied; 0 for a database jobwire never touched."""
    if await conn.fetchval("SELECT to_regclass('jobwire_schema')") is None:
        return 0
    return int(await conn.fetchval("SELECT max(version) FROM jobwire_schema") or 0)


async def migrate(conn: Conn, name: str, *, dry_run: bool = False) -> tuple[int, list[int]]:
    """Apply the migrations the database lacks, all in one transaction under the migration lock.
    Returns the version found and the migrations applied (with `dry_run`, those that would be,
    read in a read-only transaction)."""
    async with conn.transaction(readonly=dry_run):
        if not dry_run:
            # Replicas starting together: one migrates, the others wait here and then see it done.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS jobwire_schema (version integer NOT NULL)")
        version = await schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {name} has schema version {version}, newer than this jobwire knows "
                f"({SCHEMA_VERSION}); upgrade jobwire or use another database")
        pending = list(range(version + 1, SCHEMA_VERSION + 1))
        if not dry_run:
            for number in pending:
                await conn.execute(MIGRATIONS[number - 1])
                await conn.execute("INSERT INTO jobwire_schema (version) VALUES ($1)", number)
            await _settle_restored_events(conn)
    return version, pending


async def _settle_restored_events(conn: Conn) -> None:
    """Event rows carry the id of the transaction that wrote them, and replicas follow new events
    by those ids. A dump restored onto a server whose transaction count is behind the dump's
    brings ids "from the future": they are marked as past (1), as nothing else reads them."""
    if await conn.fetchval("SELECT max(xid) > pg_current_xact_id() FROM events"):
        await conn.execute("UPDATE events SET xid = '1' WHERE xid > pg_current_xact_id()")
