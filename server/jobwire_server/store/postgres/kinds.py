"""SQL of the kinds remote workers declared (PostgreSQL). Replicas declaring one kind at once are
serialised by its row lock (`FOR UPDATE`), so a mismatch is never written by a race."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from jobwire_server.domain.kinds import KindSpec, check_declared
from jobwire_server.store import kind_rows

Conn = asyncpg.Connection

_TYPES = ("text", "jsonb", "text", "integer", "double precision", "double precision", "double precision",
          "timestamptz")
_VALUES = ", ".join(f"${n}::{t}" for n, t in enumerate(_TYPES, 1))
_UPSERT = (f"INSERT INTO kinds ({kind_rows.SELECT}) VALUES ({_VALUES}) "
           "ON CONFLICT (name) DO UPDATE SET queue = excluded.queue, max_attempts = excluded.max_attempts, "
           "timeout = excluded.timeout, retry_base_delay = excluded.retry_base_delay, "
           "retry_max_delay = excluded.retry_max_delay, declare_time = excluded.declare_time")


async def declare(conn: Conn, specs: Sequence[KindSpec], now: float) -> list[KindSpec]:
    """Record each kind, or raise KindMismatch (nothing written) when one changes a known kind's phases."""
    for spec in specs:
        found = await conn.fetchrow(f"SELECT {kind_rows.SELECT} FROM kinds WHERE name = $1 FOR UPDATE", spec.name)
        check_declared(kind_rows.from_row(tuple(found)) if found is not None else None, spec)
    await conn.executemany(_UPSERT, [kind_rows.to_row(spec, now) for spec in specs])
    return list(specs)


async def list_all(conn: Conn) -> list[KindSpec]:
    rows = await conn.fetch(f"SELECT {kind_rows.SELECT} FROM kinds ORDER BY name")
    return [kind_rows.from_row(tuple(row)) for row in rows]
