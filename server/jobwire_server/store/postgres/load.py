"""Writing a whole jobwire database into PostgreSQL for `jobwire copy`.

Everything happens in the caller's one transaction: the tables are locked against writers
(readers still read), found empty, filled batch by batch with `INSERT … SELECT FROM unnest(…)`
(one statement per batch; no row can conflict in an empty table), and counted again before the
commit. The column types come from the database's catalog, so the statements follow its schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from jobwire_server.store.base import StoreError
from jobwire_server.store.transfer import TABLES, Census, Table

Conn = asyncpg.Connection


async def lock_tables(conn: Conn) -> None:
    """Keep replicas (and a second copy) from writing until the transaction ends."""
    await conn.execute(f"LOCK TABLE {', '.join(t.name for t in TABLES)} IN EXCLUSIVE MODE")


async def census(conn: Conn) -> Census:
    """Rows per table, and per state for jobs and deliveries."""
    counts = Census()
    for table in TABLES:
        counts.rows[table.name] = int(await conn.fetchval(f"SELECT count(*) FROM {table.name}"))
        if table.state:
            found = await conn.fetch(f"SELECT {table.state}, count(*) FROM {table.name} GROUP BY {table.state}")
            counts.states[table.name] = {state: int(number) for state, number in found}
    return counts


class TableLoader:
    """Inserts rows of one table, each batch in one statement."""

    def __init__(self, conn: Conn, table: Table, statement: str) -> None:
        self._conn = conn
        self._table = table
        self._statement = statement

    @classmethod
    async def prepare(cls, conn: Conn, table: Table) -> TableLoader:
        found = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table.name)
        types = {name: type_ for name, type_ in found}
        missing = [column for column in table.columns if column not in types]
        if missing:
            raise StoreError(f"table {table.name} of the target has no column {', '.join(missing)}: "
                             "its schema is not the one this jobwire writes")
        arrays = ", ".join(f"${n}::{types[column]}[]" for n, column in enumerate(table.columns, 1))
        statement = f"INSERT INTO {table.name} ({', '.join(table.columns)}) SELECT * FROM unnest({arrays})"
        return cls(conn, table, statement)

    async def insert(self, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._conn.execute(self._statement, *[list(column) for column in zip(*rows, strict=True)])
