"""PostgreSQL for tests: the server on 127.0.0.1:5432 (trust auth) that this machine and CI run.

Each test gets a fresh database cloned from a migrated template (`CREATE DATABASE … TEMPLATE`), so
tests are isolated and cheap. A test that needs PostgreSQL fails when it is unreachable: under
`make test` it must run, so it never skips.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest
from jobwire_server.store.postgres import PostgresJobStore

#: The server and the database to administer from (override with JOBWIRE_TEST_PG).
ADMIN_URL = os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_BASE = ADMIN_URL.rsplit("/", 1)[0]


def url_of(database: str) -> str:
    return f"{_BASE}/{database}"


async def _admin(*statements: str) -> None:
    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); `.ci/run` starts it, or set "
                    "JOBWIRE_TEST_PG to a server where the user may create databases")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def admin(*statements: str) -> None:
    """Run statements on the admin database (outside any test's event loop)."""
    asyncio.run(_admin(*statements))


async def admin_async(*statements: str) -> None:
    await _admin(*statements)


def create_database(template: str | None = None) -> str:
    name = f"jobwire_t_{secrets.token_hex(6)}"
    admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return name


def drop_database(name: str) -> None:
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def migrated_template() -> Iterator[str]:
    """A database with the current schema, to clone (session fixture body)."""
    name = create_database()

    async def migrate() -> None:
        store = PostgresJobStore(url_of(name))
        await store.open()
        await store.close()

    try:
        asyncio.run(migrate())
        yield name
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    yield from migrated_template()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """The URL of a fresh, migrated database, dropped after the test."""
    name = create_database(pg_template)
    try:
        yield url_of(name)
    finally:
        drop_database(name)
