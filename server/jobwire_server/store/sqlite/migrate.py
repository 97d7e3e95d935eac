"""The migration step of the SQLite store: `PRAGMA user_version` against `schema.MIGRATIONS`.

`SqliteJobStore.open` runs `migrate` on its writer connection; `jobwire migrate` runs
`migrate_file`, which opens the file for this step only (read-only for a dry run).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from jobwire_server.domain.errors import SchemaTooNew
from jobwire_server.store.base import StoreError
from jobwire_server.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0] or 0)


def migrate(conn: sqlite3.Connection, name: str, *, dry_run: bool = False) -> tuple[int, list[int]]:
    """Apply the migrations the file lacks, each in its own transaction with its version bump.
    Returns the version found and the migrations applied (with `dry_run`, those that would be)."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database {name} has schema version {version}, newer than this jobwire knows "
            f"({SCHEMA_VERSION}); upgrade jobwire or use another file")
    pending = list(range(version + 1, SCHEMA_VERSION + 1))
    if dry_run:
        return version, pending
    for number in pending:
        script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[number - 1]}\nPRAGMA user_version = {number};\nCOMMIT;"
        try:
            conn.executescript(script)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return version, pending


def migrate_file(path: str, *, dry_run: bool = False) -> tuple[int, list[int]]:
    """`migrate` on the file at `path`, created when missing (unless `dry_run`: then nothing is
    created or written, and a missing file counts as version 0)."""
    file = Path(path)
    if not file.exists():
        if dry_run:
            return 0, list(range(1, SCHEMA_VERSION + 1))
        if not file.parent.is_dir():
            raise StoreError(f"cannot open database {path}: directory {file.parent} does not exist")
    try:
        if dry_run:
            conn = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")  # a server on the file may be committing
            return migrate(conn, path, dry_run=dry_run)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
