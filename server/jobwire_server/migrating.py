"""`jobwire migrate`: the migration step of either store, on its own.

A server migrates when it opens its store; this runs the same step without serving, so a
deployment can migrate first (an init job, a step before a rolling upgrade) and see what it did.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from jobwire_server.config import is_postgres_url
from jobwire_server.store.base import StoreError


@dataclass(frozen=True, slots=True)
class SchemaMigration:
    """What the migration step found and did (or, with `dry_run`, would do)."""

    #: The database as shown to people (a URL without its password).
    database: str
    #: The schema version found.
    before: int
    #: The migrations applied, or that a dry run would apply, in order.
    pending: tuple[int, ...]
    #: The version this code knows.
    latest: int
    dry_run: bool

    @property
    def after(self) -> int:
        return self.before if self.dry_run or not self.pending else self.pending[-1]

    def describe(self) -> str:
        """One line for people."""
        if not self.pending:
            return f"{self.database}: schema version {self.before}, up to date (nothing to do)"
        versions = ("migrations " if len(self.pending) > 1 else "migration ") + ", ".join(map(str, self.pending))
        if self.dry_run:
            return (f"{self.database}: schema version {self.before}; would apply {versions} "
                    f"(to version {self.latest}); nothing written (dry run)")
        return f"{self.database}: schema version {self.before} → {self.after} (applied {versions})"


async def migrate(db: str, *, dry_run: bool = False) -> SchemaMigration:
    """Migrate the database `db` names (a SQLite path or a PostgreSQL URL) to this code's schema.

    Raises `StoreError` when it cannot be opened and `SchemaTooNew` when its schema is newer than
    this code knows."""
    if is_postgres_url(db):
        return await _migrate_postgres(db, dry_run)
    from jobwire_server.store.sqlite.migrate import migrate_file  # noqa: PLC0415
    from jobwire_server.store.sqlite.schema import SCHEMA_VERSION  # noqa: PLC0415

    before, pending = await asyncio.to_thread(migrate_file, db, dry_run=dry_run)
    return SchemaMigration(db, before, tuple(pending), SCHEMA_VERSION, dry_run)


async def _migrate_postgres(url: str, dry_run: bool) -> SchemaMigration:
    # Imported here: asyncpg is needed only for PostgreSQL.
    import asyncpg  # noqa: PLC0415

    from jobwire_server.store.postgres import admin, migrate  # noqa: PLC0415
    from jobwire_server.store.postgres.schema import SCHEMA_VERSION  # noqa: PLC0415
    from jobwire_server.store.postgres.store import display_url  # noqa: PLC0415

    name = display_url(url)
    conn = await admin.connect(url)
    try:
        before, pending = await migrate.migrate(conn, name, dry_run=dry_run)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise StoreError(admin.open_error(url, exc)) from None
    finally:
        await admin.close(conn)
    return SchemaMigration(name, before, tuple(pending), SCHEMA_VERSION, dry_run)
