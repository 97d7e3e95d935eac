"""The SQLite store: the conformance suite on a file under tmp_path, plus what only SQLite has."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from jobwire_server.domain.errors import SchemaTooNew
from jobwire_server.store.sqlite import SqliteJobStore
from jobwire_server.store.sqlite.schema import SCHEMA_VERSION
from jobwire_server.store.sqlite.store import StoreError

from tests.store.conformance import StoreConformance, insert, nj
from tests.store.schedule_conformance import ScheduleConformance

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)


class TestSqliteStore(StoreConformance, ScheduleConformance):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "store.db"

    @pytest.fixture
    async def store(self, db_path: Path) -> AsyncIterator[SqliteJobStore]:
        store = SqliteJobStore(str(db_path))
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def reopen(self, db_path: Path) -> Callable[[], SqliteJobStore]:
        return lambda: SqliteJobStore(str(db_path))

    @pytest.fixture
    async def newer_schema_store(self, tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
        path = tmp_path / "newer.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE jobs_from_the_future (x)")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        store = SqliteJobStore(str(path))
        yield store
        # close() is a no-op after a clean refusal; it also ends a connection a refused open() leaked,
        # whose non-daemon thread would otherwise keep the test process from exiting.
        await store.close()

    # ------------------------------------------------------------------ SQLite only

    async def test_open_migrates_to_the_current_version_in_wal_mode(self, store: SqliteJobStore,
                                                                    db_path: Path) -> None:
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async def test_reopening_a_current_database_keeps_its_rows(self, store: SqliteJobStore, db_path: Path) -> None:
        (job,) = await insert(store, nj())
        other = SqliteJobStore(str(db_path))
        await other.open()  # migrations are not applied twice
        try:
            assert (await other.get_job(job.id)).id == job.id
        finally:
            await other.close()

    async def test_newer_schema_error_names_the_file_and_both_versions(self, newer_schema_store: SqliteJobStore,
                                                                       tmp_path: Path) -> None:
        with pytest.raises(Exception) as info:
            await newer_schema_store.open()
        message = str(info.value)
        assert str(tmp_path / "newer.db") in message
        assert str(SCHEMA_VERSION + 1) in message and str(SCHEMA_VERSION) in message
        with sqlite3.connect(tmp_path / "newer.db") as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1, "left untouched"

    async def test_a_refused_open_leaves_no_connection_behind(self, newer_schema_store: SqliteJobStore) -> None:
        # A leaked connection thread keeps a file handle open for the life of the process.
        before = set(threading.enumerate())
        with pytest.raises(SchemaTooNew):
            await newer_schema_store.open()
        leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        assert leaked == [], f"open() left {len(leaked)} connection thread(s) running after refusing the schema"

    @pytest.mark.parametrize(("mode", "number"), [("FULL", 2), ("NORMAL", 1)])
    async def test_synchronous_mode_is_applied(self, tmp_path: Path, mode: str, number: int) -> None:
        store = SqliteJobStore(str(tmp_path / "sync.db"), synchronous=mode)
        await store.open()
        try:
            for thread in (store._writer, store._reader):
                assert thread is not None
                assert (await thread.run(lambda c: c.execute("PRAGMA synchronous").fetchone()))[0] == number
        finally:
            await store.close()

    async def test_a_missing_directory_is_a_clear_error(self, tmp_path: Path) -> None:
        with pytest.raises(StoreError, match="does not exist"):
            await SqliteJobStore(str(tmp_path / "nowhere" / "x.db")).open()

    async def test_a_closed_store_refuses_work(self, db_path: Path) -> None:
        store = SqliteJobStore(str(db_path))
        await store.open()
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await insert(store, nj())
