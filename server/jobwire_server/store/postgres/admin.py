"""A connection of its own for the database commands (`jobwire migrate`, `jobwire copy`), set
up as the store's connections are."""

from __future__ import annotations

import asyncio
import contextlib

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
        raise StoreError(open_error(url, exc)) from None
    try:
        await _setup_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


def open_error(url: str, exc: Exception) -> str:
    """The one line `jobwire serve` prints when it cannot open (and migrate) the database: what
    failed and what to check."""
    return PostgresJobStore(url)._open_error(exc)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (PostgreSQL's carry details on further lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


async def close(conn: asyncpg.Connection) -> None:
    """Close politely, without hiding the error that ended the work: a connection the server
    dropped is only let go."""
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:
        with contextlib.suppress(Exception):
            conn.terminate()
