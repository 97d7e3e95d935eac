"""The SQLite store: the conformance suite on a file under tmp_path, plus what only SQLite has."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from jobwire_server.domain.actions import plan_cancel
from jobwire_server.domain.errors import SchemaTooNew
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.states import JobState
from jobwire_server.store.sqlite import SqliteJobStore, search
from jobwire_server.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from jobwire_server.store.sqlite.store import StoreError

from tests.store.conformance import T0, StoreConformance, insert, nj
from tests.store.kind_conformance import KindConformance
from tests.store.queue_conformance import QueueConformance, RemoteQueueConformance
from tests.store.schedule_conformance import ScheduleConformance

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)


class TestSqliteStore(StoreConformance, ScheduleConformance, KindConformance, QueueConformance,
                      RemoteQueueConformance):
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


# ---------------------------------------------------------------------- label search


def _plan(path: Path, sql: str, params: tuple[object, ...]) -> str:
    with sqlite3.connect(path) as conn:
        return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def _label_rows(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT job_id, key, value FROM job_labels"))


async def test_job_labels_are_written_with_the_job_and_deleted_with_it(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    store = SqliteJobStore(str(path))
    await store.open()
    try:
        labelled, plain = await insert(store, nj(labels={"env": "prod", "team": "web"}), nj())
        assert _label_rows(path) == [(labelled.id, "env", "prod"), (labelled.id, "team", "web")]
        await store.update_job(labelled.id, lambda j: plan_cancel(j, "", T0 + 1))
        await store.mark_stale({JobState.CANCELLED: T0 + 2}, T0 + 3, 10)
        assert len(await store.delete_stale(T0 + 4, T0 + 4, 10)) == 1
        assert _label_rows(path) == [], "deleted with its job"
        assert (await store.get_job(plain.id)).labels == {}
    finally:
        await store.close()


async def test_the_migration_indexes_the_labels_of_jobs_already_stored(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file written before label search
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO jobs (id, queue, kind, payload, priority, state, max_attempts, labels, "
                     "create_time, update_time, run_at) VALUES (?, 'default', 'k', x'', 5, 'QUEUED', 3, ?, 1, 1, 1)",
                     ("01890000-0000-7000-8000-000000000001", '{"env": "prod"}'))
    store = SqliteJobStore(str(path))
    await store.open()
    try:
        assert _label_rows(path) == [("01890000-0000-7000-8000-000000000001", "env", "prod")]
        assert await store.list_job_ids(JobQuery(label_keys=frozenset({"env"}))) == [
            "01890000-0000-7000-8000-000000000001"]
    finally:
        await store.close()


def test_label_and_finish_filters_are_answered_from_their_indexes(tmp_path: Path) -> None:
    """The plans ListJobs runs (a page over a million jobs stays a few index steps: bench/search.py)."""
    path = tmp_path / "plans.db"
    with sqlite3.connect(path) as conn:
        for script in MIGRATIONS:
            conn.executescript(script)
    calls: list[tuple[str, tuple[object, ...]]] = []

    class Spy:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
            calls.append((sql, tuple(params)))
            return self.conn.execute(sql, params)

    def plan_of(query: JobQuery) -> str:
        calls.clear()
        with sqlite3.connect(path) as conn:
            search.job_ids(Spy(conn), query, 51)  # type: ignore[arg-type]
        sql, params = calls[-1]
        return _plan(path, sql, params)

    exact = plan_of(JobQuery(labels=MappingProxyType({"env": "prod"}), states=frozenset({JobState.FAILED})))
    assert "SEARCH l USING COVERING INDEX job_labels_value (key=? AND value=?)" in exact
    assert "TEMP B-TREE" not in exact, "read in job id order, no sort"
    any_of = plan_of(JobQuery(label_in=MappingProxyType({"env": frozenset({"prod", "staging"})})))
    assert "MERGE (UNION ALL)" in any_of and any_of.count("job_labels_value") == 2
    assert "TEMP B-TREE" not in any_of
    key = plan_of(JobQuery(label_keys=frozenset({"customer"}), queue="media"))
    assert "SEARCH l USING COVERING INDEX job_labels_key (key=?)" in key and "TEMP B-TREE" not in key
    finished = plan_of(JobQuery(finished_after=T0, finished_before=T0 + 3600))
    assert "jobs_by_finish (state=? AND finish_time>? AND finish_time<?)" in finished
    created = plan_of(JobQuery(created_after=T0))
    assert "sqlite_autoindex_jobs_1 (id>?)" in created


async def test_a_common_label_with_a_narrower_queue_is_listed_from_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "COMMON_LABEL", 2)  # "common" from three jobs on
    store = SqliteJobStore(str(tmp_path / "queue.db"))
    await store.open()
    try:
        wide = await insert(store, *[nj(queue="wide", labels={"team": "web"}, payload=bytes([i])) for i in range(4)])
        narrow = await insert(store, nj(queue="narrow", labels={"team": "web"}), nj(queue="narrow"),
                              nj(queue="narrow", labels={"team": "db"}))
        query = JobQuery(queue="narrow", labels=MappingProxyType({"team": "web"}))
        with sqlite3.connect(tmp_path / "queue.db") as conn:
            assert search._queue_is_narrower(conn, query, search._driver(query))  # type: ignore[arg-type]
        assert await store.list_job_ids(query) == [narrow[0].id]
        assert await store.list_job_ids(replace(query, labels=MappingProxyType({}),
                                                label_keys=frozenset({"team"}))) == [narrow[2].id, narrow[0].id]
        assert await store.list_job_ids(replace(query, queue="wide", page_size=2)) == [wide[3].id, wide[2].id]
        assert await store.count_jobs(query) == 1
    finally:
        await store.close()
