"""Reading a whole SQLite jobwire database for `jobwire copy`.

The file is opened read-only and read in one transaction, so every table comes from the same
snapshot even if a server is still committing to it. Rows come in batches, in key order, as
`store.transfer` describes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobwire_server.domain.errors import SchemaTooNew
from jobwire_server.store.base import StoreError
from jobwire_server.store.sqlite.migrate import schema_version
from jobwire_server.store.sqlite.schema import SCHEMA_VERSION
from jobwire_server.store.transfer import TABLES, Census, Table

Row = tuple[Any, ...]


def open_source(path: str) -> sqlite3.Connection:
    """A read-only connection to a jobwire database at this code's schema version, inside the
    read transaction every later read shares. Raises `StoreError` (or `SchemaTooNew`) otherwise."""
    file = Path(path)
    if not file.is_file():
        raise StoreError(f"cannot read database {path}: no such file")
    try:
        conn = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read database {path}: {exc}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        _check_version(path, schema_version(conn))
        conn.execute("BEGIN")  # deferred: the first read below takes the snapshot the rest share
        conn.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot read database {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _check_version(path: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"database {path} has schema version {version}, newer than this jobwire knows "
                           f"({SCHEMA_VERSION}); copy it with the jobwire that wrote it")
    if version == 0:
        raise StoreError(f"{path} is not a jobwire database (it has no schema version)")
    if version < SCHEMA_VERSION:
        raise StoreError(f"database {path} has schema version {version}, older than this jobwire's "
                         f"({SCHEMA_VERSION}): run `jobwire migrate --db {path}` first")


def batches(conn: sqlite3.Connection, table: Table, size: int) -> Iterator[list[Row]]:
    """Every row of `table` in key order, `size` rows at a time, flags as booleans."""
    cursor = conn.execute(f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {', '.join(table.key)}")
    flags = [i for i, column in enumerate(table.columns) if column in table.flags]
    while found := cursor.fetchmany(size):
        if flags:
            found = [_with_flags(row, flags) for row in found]
        yield found


def _with_flags(row: Row, flags: list[int]) -> Row:
    values = list(row)
    for i in flags:
        values[i] = bool(values[i])
    return tuple(values)


def census(conn: sqlite3.Connection) -> Census:
    """Rows per table, and per state for jobs and deliveries."""
    counts = Census()
    for table in TABLES:
        counts.rows[table.name] = int(conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0])
        if table.state:
            counts.states[table.name] = {
                state: int(number) for state, number in
                conn.execute(f"SELECT {table.state}, count(*) FROM {table.name} GROUP BY {table.state}")}
    return counts


def leases_held(conn: sqlite3.Connection, now: float) -> tuple[int, int]:
    """RUNNING jobs, and how many of them hold a lease that has not run out at `now` (a sign that
    a server still runs them)."""
    running, live = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE lease_expires >= ?) FROM jobs WHERE state = 'RUNNING'",
        (now,)).fetchone()
    return int(running), int(live or 0)
