"""Scratch PostgreSQL databases for `python -m bench --store postgres` and the pgqueuer floor.

Every server, floor and template of a run gets its own database, created through the admin URL
(`--pg-url`, by default the local server's `test` database as user postgres) and dropped after.
Names carry the bench's process id, so two runs on one server never touch each other's databases.
asyncpg is imported when first needed: the SQLite bench runs without it.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: Where scratch databases are created from; any database of the server will do.
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Every database the bench creates starts with this.
PREFIX = "jobwire_bench_"
_NAME = re.compile(r"[a-z0-9_]{1,63}")


def scratch_name(label: str, pid: int | None = None) -> str:
    """`jobwire_bench_<pid>_<label>`: unique to this bench process (or `pid`)."""
    name = f"{PREFIX}{os.getpid() if pid is None else pid}_{label}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


def database_url(admin_url: str, name: str) -> str:
    """The admin URL with its database replaced by `name` (user, host, port and options kept)."""
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def redact(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":…@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def connect(url: str, **options: Any) -> Any:
    """An asyncpg connection (asyncpg imported on first use)."""
    import asyncpg  # noqa: PLC0415 - only the PostgreSQL bench needs it

    return await asyncpg.connect(url, **options)


async def _checked_connect(url: str) -> Any:
    """`connect`, with every way of not getting a connection said in one line (ConnectionError)."""
    try:
        return await connect(url, timeout=10)
    except ImportError as exc:
        raise ConnectionError(f"asyncpg is not installed ({exc}): `make bench` installs it") from None
    except Exception as exc:
        raise ConnectionError(f"cannot connect to PostgreSQL at {redact(url)}: {type(exc).__name__}: {exc}") from None


async def _admin(admin_url: str, *statements: str) -> None:
    conn = await _checked_connect(admin_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create `name` (dropped first if a crashed run left it) and return its URL. With `template`,
    a copy of that database (which must have no open connection)."""
    for value in (name, template):
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"not a plain database name: {value!r}")
    await drop_database(admin_url, name)
    if template is None:
        await _admin(admin_url, f'CREATE DATABASE "{name}"')
    else:
        # A copy needs the template to itself: end whatever a stopped server may have left open.
        await _admin(admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                f"WHERE datname = '{template}' AND pid <> pg_backend_pid()",
                     f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop `name` if it exists, ending any connection still open to it."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def server_settings(url: str, names: tuple[str, ...]) -> dict[str, str]:
    """`SHOW` each setting (synchronous_commit, …) of the server at `url`."""
    conn = await _checked_connect(url)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}
    finally:
        await conn.close()
