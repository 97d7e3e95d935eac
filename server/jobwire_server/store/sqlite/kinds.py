"""SQL of the kinds remote workers declared (SQLite): plain functions on a connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from jobwire_server.domain.kinds import KindSpec, check_declared
from jobwire_server.store import kind_rows

Conn = sqlite3.Connection

_UPSERT = (f"INSERT INTO kinds ({kind_rows.SELECT}) VALUES ({', '.join('?' * len(kind_rows.COLUMNS))}) "
           "ON CONFLICT (name) DO UPDATE SET queue = excluded.queue, max_attempts = excluded.max_attempts, "
           "timeout = excluded.timeout, retry_base_delay = excluded.retry_base_delay, "
           "retry_max_delay = excluded.retry_max_delay, declare_time = excluded.declare_time")


def declare(conn: Conn, specs: Sequence[KindSpec], now: float) -> list[KindSpec]:
    """Record each kind, or raise KindMismatch (nothing written) when one changes a known kind's phases."""
    for spec in specs:
        found = conn.execute(f"SELECT {kind_rows.SELECT} FROM kinds WHERE name = ?", (spec.name,)).fetchone()
        check_declared(kind_rows.from_row(found) if found is not None else None, spec)
    conn.executemany(_UPSERT, [kind_rows.to_row(spec, now) for spec in specs])
    return list(specs)


def list_all(conn: Conn) -> list[KindSpec]:
    return [kind_rows.from_row(row) for row in conn.execute(f"SELECT {kind_rows.SELECT} FROM kinds ORDER BY name")]
