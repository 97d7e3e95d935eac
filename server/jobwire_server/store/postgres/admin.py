"""A connection of its own for the database commands (`jobwire migrate`, `jobwire copy`), set
up as the store's connections are."""

from __future__ import annotations

import asyncpg

from jobwire_server.store.base import StoreError
from jobwire_server.store.postgres.store import (
    CONNECT_TIMEOUT,
    PostgresJobStore,
    _setup_connection,
    connection_settings,
)


async def connect(url: str) -> asyncpg.Connection:
    """One connection with the store's codecs (ids and JSON as text, times as epoch seconds); a
    failure is the one-line `StoreError` the store's `open` gives."""
    dsn, settings = connection_settings(url)
    try:
        conn = await asyncpg.connect(dsn, server_settings=settings, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        raise StoreError(PostgresJobStore(url)._open_error(exc)) from None
    try:
        await _setup_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


def one_line(exc: BaseException) -> str:
    """An error's message on one line (PostgreSQL's carry details on further lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__
