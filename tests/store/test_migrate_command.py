"""`jobwire migrate`: the migration step of either store on its own, as the command runs it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from jobwire.cli import main
from jobwire_server.store.postgres import PostgresJobStore
from jobwire_server.store.postgres.schema import SCHEMA_VERSION as PG_VERSION
from jobwire_server.store.sqlite import SqliteJobStore
from jobwire_server.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from jobwire_server.store.sqlite.schema import SCHEMA_VERSION as SQLITE_VERSION

from tests.pg import admin_async, create_database, drop_database, url_of

pytestmark = pytest.mark.timeout(60)

Captured = pytest.CaptureFixture[str]


def applied(first: int, last: int) -> str:
    """How the command names migrations first…last: "migration 3" or "migrations 1, 2, 3"."""
    numbers = list(range(first, last + 1))
    return ("migration " if len(numbers) == 1 else "migrations ") + ", ".join(map(str, numbers))


def jobwire(capsys: Captured, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


@pytest.fixture
def empty_url() -> Iterator[str]:
    """A database no jobwire has touched."""
    name = create_database()
    try:
        yield url_of(name)
    finally:
        drop_database(name)


async def _fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def fetchval(url: str, query: str) -> object:
    return asyncio.run(_fetchval(url, query))


def public_tables(url: str) -> object:
    return fetchval(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")


# ---------------------------------------------------------------------- PostgreSQL


def test_postgres_dry_run_writes_nothing_then_migrate_applies_then_nothing_to_do(empty_url: str,
                                                                                 capsys: Captured) -> None:
    code, out, _ = jobwire(capsys, "migrate", "--db", empty_url, "--dry-run")
    assert code == 0
    assert out == (f"{empty_url}: schema version 0; would apply {applied(1, PG_VERSION)} (to version {PG_VERSION}); "
                   "nothing written (dry run)")
    assert public_tables(empty_url) == 0, "a dry run creates nothing, not even the version table"

    code, out, _ = jobwire(capsys, "migrate", "--db", empty_url)
    assert code == 0
    assert out == f"{empty_url}: schema version 0 → {PG_VERSION} (applied {applied(1, PG_VERSION)})"
    assert fetchval(empty_url, "SELECT max(version) FROM jobwire_schema") == PG_VERSION

    code, out, _ = jobwire(capsys, "migrate", "--db", empty_url)
    assert (code, out) == (0, f"{empty_url}: schema version {PG_VERSION}, up to date (nothing to do)")
    assert fetchval(empty_url, "SELECT count(*) FROM jobwire_schema") == PG_VERSION, "each version recorded once"


async def test_a_store_opens_on_a_database_the_command_migrated(empty_url: str) -> None:
    assert await asyncio.to_thread(main, ["migrate", "--db", empty_url]) == 0
    store = PostgresJobStore(empty_url, pool_size=2)
    await store.open()
    try:
        assert await store.schema_version() == PG_VERSION
    finally:
        await store.close()


def test_postgres_newer_schema_is_refused_and_left_alone(empty_url: str, capsys: Captured) -> None:
    async def from_the_future() -> None:
        conn = await asyncpg.connect(empty_url)
        try:
            await conn.execute("CREATE TABLE jobwire_schema (version integer NOT NULL)")
            await conn.execute("INSERT INTO jobwire_schema VALUES ($1)", PG_VERSION + 1)
        finally:
            await conn.close()

    asyncio.run(from_the_future())
    for dry_run in ([], ["--dry-run"]):
        code, out, err = jobwire(capsys, "migrate", "--db", empty_url, *dry_run)
        assert (code, out) == (1, "")
        assert err == (f"jobwire: error: database {empty_url} has schema version {PG_VERSION + 1}, newer than "
                       f"this jobwire knows ({PG_VERSION}); upgrade jobwire or use another database")
    assert public_tables(empty_url) == 1


def test_postgres_unreachable_or_missing_is_one_line(capsys: Captured) -> None:
    code, _, err = jobwire(capsys, "migrate", "--db", "postgresql://postgres@127.0.0.1:1/test")
    assert code == 1 and "\n" not in err
    assert err.startswith("jobwire: error: cannot open database postgresql://postgres@127.0.0.1:1/test: ")
    assert "reachable" in err
    code, _, err = jobwire(capsys, "migrate", "--db", url_of("jobwire_no_such_database"))
    assert code == 1 and "\n" not in err and "create the database" in err


def test_passwords_stay_out_of_the_output(empty_url: str, capsys: Captured) -> None:
    with_password = empty_url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    code, out, _ = jobwire(capsys, "migrate", "--db", with_password, "--dry-run")
    assert code == 0 and "hunter2" not in out and "postgres:***@" in out


def test_bad_urls_are_usage_errors(capsys: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBWIRE_DB", raising=False)
    assert jobwire(capsys, "migrate")[0] == 2
    code, _, err = jobwire(capsys, "migrate", "--db", "mysql://h/db")
    assert code == 2 and "unknown database URL scheme 'mysql'" in err
    code, _, err = jobwire(capsys, "migrate", "--db", "postgresql://h:port/db")
    assert code == 2 and "not a number" in err


# ---------------------------------------------------------------------- SQLite


def test_sqlite_dry_run_creates_no_file_then_migrate_creates_it(tmp_path: Path, capsys: Captured) -> None:
    path = tmp_path / "jobwire.db"
    code, out, _ = jobwire(capsys, "migrate", "--db", str(path), "--dry-run")
    assert code == 0 and f"would apply {applied(1, SQLITE_VERSION)}" in out
    assert not path.exists()

    code, out, _ = jobwire(capsys, "migrate", "--db", str(path))
    assert (code, out) == (0, f"{path}: schema version 0 → {SQLITE_VERSION} (applied {applied(1, SQLITE_VERSION)})")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SQLITE_VERSION
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0

    code, out, _ = jobwire(capsys, "migrate", "--db", str(path))
    assert (code, out) == (0, f"{path}: schema version {SQLITE_VERSION}, up to date (nothing to do)")


def test_sqlite_migrates_an_older_file_and_a_dry_run_leaves_it_as_it_was(tmp_path: Path,
                                                                         capsys: Captured) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file the first release wrote
        conn.executescript(SQLITE_MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
    before = path.read_bytes()

    code, out, _ = jobwire(capsys, "migrate", "--db", str(path), "--dry-run")
    assert (code, out) == (0, f"{path}: schema version 1; would apply {applied(2, SQLITE_VERSION)} "
                              f"(to version {SQLITE_VERSION}); "
                              "nothing written (dry run)")
    assert path.read_bytes() == before

    code, out, _ = jobwire(capsys, "migrate", "--db", str(path))
    assert (code, out) == (0, f"{path}: schema version 1 → {SQLITE_VERSION} (applied {applied(2, SQLITE_VERSION)})")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM delivery_attempts").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM schedules").fetchone()[0] == 0


async def test_sqlite_store_opens_a_file_the_command_made(tmp_path: Path) -> None:
    path = tmp_path / "made.db"
    assert await asyncio.to_thread(main, ["migrate", "--db", str(path)]) == 0
    store = SqliteJobStore(str(path))
    await store.open()
    await store.close()


def test_sqlite_newer_schema_and_bad_files_are_refused(tmp_path: Path, capsys: Captured,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SQLITE_VERSION + 1}")
    for dry_run in ([], ["--dry-run"]):
        code, _, err = jobwire(capsys, "migrate", "--db", str(newer), *dry_run)
        assert code == 1
        assert err == (f"jobwire: error: database {newer} has schema version {SQLITE_VERSION + 1}, newer than "
                       f"this jobwire knows ({SQLITE_VERSION}); upgrade jobwire or use another file")
    (tmp_path / "junk.db").write_text("not a database")
    code, _, err = jobwire(capsys, "migrate", "--db", str(tmp_path / "junk.db"))
    assert code == 1 and err.endswith("file is not a database")
    code, _, err = jobwire(capsys, "migrate", "--db", str(tmp_path / "no" / "such" / "dir.db"))
    assert code == 1 and "does not exist" in err
    monkeypatch.setenv("JOBWIRE_DB", str(tmp_path / "from-env.db"))
    code, out, _ = jobwire(capsys, "migrate")
    assert code == 0 and out.startswith(f"{tmp_path / 'from-env.db'}: schema version 0 →")


def test_a_role_without_rights_is_a_one_line_error_and_nothing_is_applied(empty_url: str, capsys: Captured) -> None:
    async def setup() -> None:
        await admin_async("DROP ROLE IF EXISTS jobwire_migrate_ro", "CREATE ROLE jobwire_migrate_ro LOGIN")
        conn = await asyncpg.connect(empty_url)
        try:
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        code, _, err = jobwire(capsys, "migrate", "--db", empty_url.replace("postgres@", "jobwire_migrate_ro@"))
        assert code == 1 and "\n" not in err
        assert err.startswith("jobwire: error: cannot open database ") and "permission denied" in err
        assert "the role needs CREATE on the database's schema" in err
        assert public_tables(empty_url) == 0
    finally:
        drop_database(empty_url.rsplit("/", 1)[1])
        asyncio.run(admin_async("DROP ROLE IF EXISTS jobwire_migrate_ro"))
