"""`jobwire copy`: move a SQLite jobwire database into PostgreSQL.

The source is read in one read-only transaction (one snapshot); the target is migrated to this
code's schema, then written in one transaction: its tables are locked against writers, must be
empty, are filled table by table in batches, and are counted again before the commit. When the
counts differ from the source's nothing is committed. So a copy is all or nothing, and a copy that
stopped half-way leaves the target as it was.

Every column is copied as it is: ids, event sequences, states, times (to the microsecond
PostgreSQL keeps), labels, webhooks, errors, request ids, the outbox and its log. Jobs RUNNING in
the source keep their lease (owner and expiry): no server on the target holds them, so the
target's rescuer puts them back in the queue once the lease has run out, as after a crash. Leased
webhook deliveries likewise go out again once their lease has run out.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from jobwire_server.store.base import StoreError
from jobwire_server.store.postgres import admin, load, migrate
from jobwire_server.store.postgres.store import display_url
from jobwire_server.store.sqlite import dump
from jobwire_server.store.transfer import TABLES, Census, Table

DEFAULT_BATCH = 1000


class CopyRefused(Exception):
    """The copy was not made (a target that holds data, counts that do not match); the message
    says why and what to do."""


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    #: The target's schema version before the copy, and the migrations the copy applied to it.
    target_version: int
    migrated: tuple[int, ...]
    #: What both databases hold after the copy (they were checked to be equal).
    census: Census
    seconds: float
    #: Jobs RUNNING in the source, and how many of their leases were still live when copied.
    running: int
    live_leases: int


def source_path(text: str) -> str:
    """`PATH`, `sqlite:PATH` or `sqlite:///ABSOLUTE/PATH` → the path."""
    if text.startswith("sqlite:"):
        text = text.removeprefix("sqlite:")
        if text.startswith("//"):
            text = text.removeprefix("//")
    return text


async def copy_database(source: str, target_url: str, *, batch: int = DEFAULT_BATCH,
                        on_table: Callable[[str, int], None] = lambda _table, _rows: None) -> CopyReport:
    """Copy the SQLite database at `source` into the PostgreSQL database `target_url`, which must
    hold no jobwire rows. `on_table(name, rows)` is called as each table is done."""
    started = time.monotonic()
    target = display_url(target_url)
    src = dump.open_source(source)
    try:
        try:
            expected = dump.census(src)
            running, live = dump.leases_held(src, time.time())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database {source}: {exc}") from None
        conn = await admin.connect(target_url)
        try:
            before, migrated = await migrate.migrate(conn, target)
            async with conn.transaction():
                await load.lock_tables(conn)
                found = await load.census(conn)
                if not found.empty:
                    held = ", ".join(f"{n} {table}" for table, n in found.rows.items() if n)
                    raise CopyRefused(f"database {target} is not empty (it holds {held}); copy only into a "
                                      "database no jobwire has used, such as a new one (createdb)")
                for table in TABLES:
                    on_table(table.name, await _copy_table(src, conn, table, batch, source, target))
                copied = await load.census(conn)
                problems = expected.differences(copied)
                if problems:
                    raise CopyRefused(f"the copy does not match the source ({'; '.join(problems)}); "
                                      "nothing was committed")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"cannot write database {target}: {admin.one_line(exc)}") from None
        finally:
            await admin.close(conn)
    finally:
        src.close()
    return CopyReport(source, target, before, tuple(migrated), copied, time.monotonic() - started, running, live)


async def _copy_table(src: sqlite3.Connection, conn: asyncpg.Connection, table: Table, batch: int,
                      source: str, target: str) -> int:
    loader = await load.TableLoader.prepare(conn, table)
    rows = 0
    batches = dump.batches(src, table, batch)
    while True:
        try:
            found = next(batches, None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read table {table.name} of {source}: {exc}") from None
        if found is None:
            return rows
        try:
            await loader.insert(found)
        except asyncpg.DataError as exc:  # a value PostgreSQL refuses (a NUL character in text, say)
            first = tuple(found[0][table.columns.index(column)] for column in table.key)
            raise StoreError(f"table {table.name}: a row of the batch from key {first} cannot be written to "
                             f"{target}: {admin.one_line(exc)}") from None
        rows += len(found)
