"""`jobwire copy`: a SQLite database moved into PostgreSQL reads back the same through either store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from jobwire import models
from jobwire.cli import main
from jobwire.sync import Client
from jobwire_server.copying import source_path
from jobwire_server.domain.actions import plan_cancel, plan_retry
from jobwire_server.domain.deliveries import AttemptOutcome, AttemptRecord, Verdict
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.models import Job, JobError, PendingEvent, Webhook
from jobwire_server.domain.queries import JobQuery
from jobwire_server.domain.queues import QueueChange, apply_change
from jobwire_server.domain.schedules import CatchupPolicy, JobTemplate, OverlapPolicy, ScheduleSpec, new_schedule
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.domain.transitions import fail, finish_phase, report_progress, retry_after_failure
from jobwire_server.store.base import ChangeQueue, ChangeSchedule, ClaimParams, CreateSchedule, DeclareKinds
from jobwire_server.store.postgres import PostgresJobStore
from jobwire_server.store.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from jobwire_server.store.postgres.store import _setup_connection
from jobwire_server.store.sqlite import SqliteJobStore, dump
from jobwire_server.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from jobwire_server.store.transfer import TABLES

from tests.conftest import StartServer
from tests.pg import create_database, drop_database, url_of
from tests.store.conformance import REQUEST_TTL, nj

pytestmark = pytest.mark.timeout(120)

Captured = pytest.CaptureFixture[str]
#: Times with more digits than PostgreSQL keeps (microseconds), to see them rounded, not shifted.
T = 1_900_000_000.123456789
HOOK = "https://hooks.example.com/jobs?token=x"
_EPOCH_2000 = 946_684_800.0


def jobwire(capsys: Captured, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err.strip()


@pytest.fixture
def empty_url() -> Iterator[str]:
    """A database no jobwire has touched: the copy migrates it."""
    name = create_database()
    try:
        yield url_of(name)
    finally:
        drop_database(name)


# ---------------------------------------------------------------------- a source with a bit of everything


def _error(job: Job, kind: str, retryable: bool, now: float) -> JobError:
    phase = next(p.name for p in job.phases if p.state.value == "RUNNING")
    return JobError(f"{kind} in {phase}", kind, retryable, phase, job.attempt, False, now)


async def build_source(path: Path, now: float = T, lease: float = 30.0) -> dict[str, str]:
    """Jobs in every state the engine leaves them in, with progress, results, errors, labels,
    request ids, dedupe keys, webhooks and their delivery log. Returns name → job id."""
    store = SqliteJobStore(str(path))
    await store.open()
    try:
        hook = Webhook(HOOK, (EventType.STARTED, EventType.SUCCEEDED, EventType.FAILED))
        news = {
            "succeeded": replace(nj("copy.ok", priority=9, phases=("fetch", "resize"), request_id="req-ok",
                                    fingerprint="fp-ok", labels={"team": "web", "ünï": "cödé"}), webhook=hook),
            "failed": replace(nj("copy.bad", priority=9, phases=("only",), max_attempts=2, dedupe_key="bad"),
                              webhook=hook),
            "running": nj("copy.run", priority=9, phases=("x", "y"), timeout=12.5),
            "queued": replace(nj("copy.wait", priority=2, payload=b"\x00\xff\x10", dedupe_key="dk", request_id="req-q",
                                 fingerprint="fp-q", labels={"a": "1"}), concurrency_key="tenant-1"),
            "scheduled": nj("copy.later", run_at=now + 3600),
            "cancelled": nj("copy.cancel", priority=1),
            "retried": nj("copy.again", priority=1, phases=("p",)),
        }
        results = await store.insert_jobs(list(news.values()), now, REQUEST_TTL)
        ids = {name: r.job.id for name, r in zip(news, results, strict=True)}
        _, claimed = await store.claim_jobs(ClaimParams(now + 1, 3, "sqlite-replica", now + 1 + lease))
        jobs = {c.job.id: c.job for c in claimed}
        assert set(jobs) == {ids["succeeded"], ids["failed"], ids["running"]}

        ok = jobs[ids["succeeded"]]
        (ok_c,) = await store.apply_changes([report_progress(ok, 0, 33.3333, "a third", now + 1.5)])
        assert ok_c is not None
        (ok_c,) = await store.apply_changes([finish_phase(ok_c.job, 0, b"\x89PNG", now + 2)])
        assert ok_c is not None
        (ok_c,) = await store.apply_changes([finish_phase(ok_c.job, 1, b'{"w": 64}', now + 2.25)])
        assert ok_c is not None and ok_c.job.state is JobState.SUCCEEDED

        bad = jobs[ids["failed"]]
        (bad_c,) = await store.apply_changes([retry_after_failure(bad, _error(bad, "IOError", True, now + 2),
                                                                  now + 3, now + 2)])
        assert bad_c is not None
        _, again = await store.claim_jobs(ClaimParams(now + 3, 1, "sqlite-replica", now + 33))
        assert [c.job.id for c in again] == [ids["failed"]]
        (bad_c,) = await store.apply_changes([fail(again[0].job, _error(again[0].job, "PermanentError", False,
                                                                               now + 4), now + 4)])
        assert bad_c is not None and bad_c.job.state is JobState.FAILED

        run = jobs[ids["running"]]
        (run_c,) = await store.apply_changes([finish_phase(run, 0, b"half", now + 2)])
        assert run_c is not None and run_c.job.state is JobState.RUNNING

        await store.update_job(ids["cancelled"], lambda job: plan_cancel(job, "not needed", now + 5))
        await store.update_job(ids["retried"], lambda job: plan_cancel(job, "oops", now + 5))
        await store.update_job(ids["retried"], lambda job: plan_retry(job, True, now + 6))

        # Webhooks: succeeded's STARTED delivered after a 503, its SUCCEEDED taken and left leased;
        # failed's STARTED answered 410 Gone (so its FAILED is STOPPED).
        taken = {(d.job_id, d.event_type): d for d in await store.take_deliveries(now + 5, 10, now + 65)}
        started = taken[(ids["succeeded"], "STARTED")]
        busy = AttemptRecord(1, now + 5, HOOK, 503, 0.25, "busy", "HTTP 503")
        await store.record_delivery_attempt(AttemptOutcome(started, busy, Verdict.RETRY, next_at=now + 10),
                                            now + 5, None)
        (retaken,) = await store.take_deliveries(now + 10, 1, now + 70)
        fine = AttemptRecord(2, now + 10, HOOK, 200, 0.125, "ok", "")
        await store.record_delivery_attempt(AttemptOutcome(retaken, fine, Verdict.DELIVERED), now + 10,
                                            PendingEvent(EventType.WEBHOOK_DELIVERED, detail="HTTP 200"))
        gone = AttemptRecord(1, now + 5, HOOK, 410, 0.5, "", "HTTP 410")
        await store.record_delivery_attempt(
            AttemptOutcome(taken[(ids["failed"], "STARTED")], gone, Verdict.GONE), now + 5,
            PendingEvent(EventType.WEBHOOK_FAILED, detail="HTTP 410"))

        # A schedule that fired (its last job is the succeeded one), and a paused one from the config file.
        template = JobTemplate(queue="default", kind="copy.ok", payload=b"\x00{}", priority=9, max_attempts=2,
                               timeout=1.5, phase_names=("fetch", "resize"), labels={"team": "web"},
                               webhook=Webhook(HOOK, (EventType.SUCCEEDED,)))
        spec = ScheduleSpec(template=template, cron="30 2 * * *", time_zone="Europe/Paris", jitter=2.5,
                            overlap=OverlapPolicy.SKIP, catchup=CatchupPolicy.RUN_ONCE, description="nightly")
        await store.write([CreateSchedule(new_schedule("nightly", spec, now)),
                           CreateSchedule(new_schedule("paused", replace(spec, cron="", interval=60), now,
                                                       paused=True, from_config=True))])
        await store.write([ChangeSchedule("nightly", lambda s: replace(s, last_fire=now + 0.5,
                                                                       last_job_id=ids["succeeded"]))])
        # A kind a remote worker declared.
        await store.write([DeclareKinds([KindSpec("copy.remote", ("fetch", "resize"), "media", 4, 2.5, 0.5, 9.0)],
                                        now + 1)])
        # A queue with settings and a started token bucket.
        change = QueueChange(rate=2.5, burst=4, key_limit=1, default_priority=7)
        await store.write([ChangeQueue("media", lambda q: apply_change(q, change, now + 0.25), now + 0.25)])
    finally:
        await store.close()
    return ids


# ---------------------------------------------------------------------- comparing what the stores return


def micro(value: Any) -> Any:
    """`value` made comparable across stores: epoch times as whole microseconds (what PostgreSQL
    keeps; SQLite keeps the float), dataclasses and mappings as plain tuples."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple((f.name, micro(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, Mapping):
        return tuple(sorted((k, micro(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(micro(v) for v in value)
    if isinstance(value, float) and value > 1e9:
        return round((value - _EPOCH_2000) * 1_000_000)
    return value


async def everything(store: Any, ids: list[str]) -> dict[str, Any]:
    return {job_id: micro((await store.get_job(job_id), await store.events_after(job_id, 0, 10_000),
                           await store.job_deliveries(job_id))) for job_id in ids}


def raw(row: Any) -> Any:
    """A row made comparable across stores: times as `micro` makes them, JSON parsed (jsonb keeps
    its own spacing and key order)."""
    return micro(tuple(_json(value) for value in row))


def _json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        return json.loads(value)
    return value


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = dump.open_source(str(path))
    try:
        return {t.name: [raw(row) for batch in dump.batches(conn, t, 1000) for row in batch] for t in TABLES}
    finally:
        conn.close()


async def postgres_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        await _setup_connection(conn)
        out = {}
        for t in TABLES:
            found = await conn.fetch(f"SELECT {', '.join(t.columns)} FROM {t.name} ORDER BY {', '.join(t.key)}")
            out[t.name] = [raw(row) for row in found]
        return out
    finally:
        await conn.close()


async def _fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


# ---------------------------------------------------------------------- the copy


async def test_copy_reads_back_the_same_through_the_postgres_store(tmp_path: Path, empty_url: str) -> None:
    source = tmp_path / "jobwire.db"
    ids = await build_source(source)
    code = await asyncio.to_thread(main, ["copy", "--from", f"sqlite:{source}", "--to", empty_url, "--batch", "2"])
    assert code == 0

    sqlite_store = SqliteJobStore(str(source))
    await sqlite_store.open()
    pg_store = PostgresJobStore(empty_url, pool_size=2)
    await pg_store.open()
    try:
        expected = await everything(sqlite_store, list(ids.values()))
        assert await everything(pg_store, list(ids.values())) == expected
        listed_sqlite, _ = await sqlite_store.list_jobs(JobQuery(page_size=1000))
        listed_pg, _ = await pg_store.list_jobs(JobQuery(page_size=1000))
        assert micro(listed_pg) == micro(listed_sqlite)
        now = T + 20
        (pg_stats,), (sqlite_stats,) = await pg_store.queue_stats("", now), await sqlite_store.queue_stats("", now)
        assert pg_stats.counts == sqlite_stats.counts
        assert pg_stats.oldest_queued_age == pytest.approx(sqlite_stats.oldest_queued_age, abs=1e-6)
        assert await pg_store.next_wakeup() == pytest.approx(await sqlite_store.next_wakeup(), abs=1e-6)
        assert await pg_store.next_lease_expiry() == pytest.approx(await sqlite_store.next_lease_expiry(), abs=1e-6)
        for name in ("nightly", "paused"):
            assert micro(await pg_store.get_schedule(name)) == micro(await sqlite_store.get_schedule(name))
        # The stores go on from where the source left off: the next event is numbered after the copied ones.
        (cancelled,) = await pg_store.apply_changes([plan_cancel(await pg_store.get_job(ids["queued"]), "x", now)])
        assert cancelled is not None
        assert cancelled.events[0].sequence == (await sqlite_store.get_job(ids["queued"])).last_sequence + 1
    finally:
        await pg_store.close()
        await sqlite_store.close()


async def test_every_column_of_every_row_is_copied(tmp_path: Path, empty_url: str) -> None:
    source = tmp_path / "jobwire.db"
    await build_source(source)
    assert await asyncio.to_thread(main, ["copy", "--from", str(source), "--to", empty_url]) == 0
    expected = sqlite_rows(source)
    assert {t: len(rows) for t, rows in expected.items()} == {
        "jobs": 7, "phases": 12, "events": 32, "requests": 2, "deliveries": 5, "delivery_attempts": 3, "schedules": 2,
        "kinds": 1, "queues": 1}
    assert await postgres_rows(empty_url) == expected


def test_the_output_counts_each_table_and_says_the_copy_was_checked(tmp_path: Path, empty_url: str,
                                                                     capsys: Captured) -> None:
    source = tmp_path / "jobwire.db"
    asyncio.run(build_source(source, now=time.time()))
    code, out, err = jobwire(capsys, "copy", "--from", str(source), "--to", empty_url, "--batch", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"copying {source} into {empty_url}"
    assert lines[1:10] == [f"  {'jobs':<18} {7:>10} rows", f"  {'phases':<18} {12:>10} rows",
                          f"  {'events':<18} {32:>10} rows", f"  {'requests':<18} {2:>10} rows",
                          f"  {'deliveries':<18} {5:>10} rows", f"  {'delivery_attempts':<18} {3:>10} rows",
                          f"  {'schedules':<18} {2:>10} rows", f"  {'kinds':<18} {1:>10} rows",
                          f"  {'queues':<18} {1:>10} rows"]
    assert f"the target was migrated first, from schema version 0 to {PG_SCHEMA_VERSION}" in out
    assert "copied 65 rows in 9 tables" in out
    assert ("  jobs by state: CANCELLED 1, FAILED 1, QUEUED 2, RUNNING 1, SCHEDULED 1, SUCCEEDED 1" in lines)
    assert "  deliveries by state: DELIVERED 1, FAILED 1, PENDING 1, STOPPED 2" in lines
    assert "verified: the target holds as many rows as the source in every table" in out
    assert "note: 1 job(s) were RUNNING in the source; they keep their leases" in out
    assert "1 of them held a lease that had not run out yet" in err, "a live lease hints at a server still running"


def test_a_target_that_holds_jobs_is_refused_and_left_as_it_was(tmp_path: Path, pg_url: str,
                                                               capsys: Captured) -> None:
    async def one_job() -> str:
        store = PostgresJobStore(pg_url, pool_size=2)
        await store.open()
        try:
            (result,) = await store.insert_jobs([nj("already.there")], T, REQUEST_TTL)
            return result.job.id
        finally:
            await store.close()

    existing = asyncio.run(one_job())
    source = tmp_path / "jobwire.db"
    asyncio.run(build_source(source))
    code, _, err = jobwire(capsys, "copy", "--from", str(source), "--to", pg_url)
    assert code == 1
    assert err == (f"jobwire: error: database {pg_url} is not empty (it holds 1 jobs, 2 phases, 1 events); copy "
                   "only into a database no jobwire has used, such as a new one (createdb)")
    after = asyncio.run(postgres_rows(pg_url))
    assert [row[0] for row in after["jobs"]] == [existing] and len(after["events"]) == 1


def test_a_second_copy_into_the_same_target_is_refused(tmp_path: Path, empty_url: str, capsys: Captured) -> None:
    source = tmp_path / "jobwire.db"
    asyncio.run(build_source(source))
    assert jobwire(capsys, "copy", "--from", str(source), "--to", empty_url)[0] == 0
    code, _, err = jobwire(capsys, "copy", "--from", str(source), "--to", empty_url)
    assert code == 1 and "is not empty (it holds 7 jobs, 12 phases, 32 events, 2 requests, 5 deliveries, " \
                          "3 delivery_attempts, 2 schedules, 1 kinds, 1 queues)" in err


def test_a_value_postgresql_refuses_rolls_the_whole_copy_back(tmp_path: Path, empty_url: str,
                                                             capsys: Captured) -> None:
    source = tmp_path / "jobwire.db"
    asyncio.run(build_source(source))
    with sqlite3.connect(source) as conn:  # PostgreSQL text cannot hold NUL
        conn.execute("UPDATE events SET detail = 'a' || char(0) || 'b' WHERE seq = 2")
    code, _, err = jobwire(capsys, "copy", "--from", str(source), "--to", empty_url)
    assert code == 1 and "\n" not in err
    assert err.startswith("jobwire: error: table events: a row of the batch from key ") and empty_url in err
    rows = asyncio.run(postgres_rows(empty_url))
    assert all(not found for found in rows.values()), "nothing of a failed copy is committed"


def test_sources_that_are_not_a_current_jobwire_database_are_refused(tmp_path: Path, empty_url: str,
                                                                     capsys: Captured) -> None:
    missing = tmp_path / "missing.db"
    code, _, err = jobwire(capsys, "copy", "--from", str(missing), "--to", empty_url)
    assert (code, err) == (1, f"jobwire: error: cannot read database {missing}: no such file")
    (tmp_path / "junk.db").write_text("junk")
    code, _, err = jobwire(capsys, "copy", "--from", str(tmp_path / "junk.db"), "--to", empty_url)
    assert code == 1 and "file is not a database" in err
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(SQLITE_MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
    code, _, err = jobwire(capsys, "copy", "--from", str(old), "--to", empty_url)
    assert code == 1 and f"run `jobwire migrate --db {old}` first" in err
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    code, _, err = jobwire(capsys, "copy", "--from", str(newer), "--to", empty_url)
    assert code == 1 and "newer than this jobwire knows" in err
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, _, err = jobwire(capsys, "copy", "--from", str(empty), "--to", empty_url)
    assert code == 1 and "is not a jobwire database" in err
    tables = asyncio.run(_fetchval(empty_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    assert tables == 0, "a source that cannot be copied is refused before the target is touched"


def test_bad_arguments_are_usage_errors(tmp_path: Path, capsys: Captured) -> None:
    db = str(tmp_path / "j.db")
    code, _, err = jobwire(capsys, "copy", "--from", "postgresql://h/db", "--to", "postgresql://h/db")
    assert code == 2 and "--from names the SQLite database" in err
    code, _, err = jobwire(capsys, "copy", "--from", db, "--to", str(tmp_path / "other.db"))
    assert code == 2 and "--to names the PostgreSQL database" in err
    code, _, err = jobwire(capsys, "copy", "--from", db, "--to", "postgresql://h")
    assert code == 2 and "names no database" in err
    with pytest.raises(SystemExit):
        main(["copy", "--from", db, "--to", "postgresql://h/db", "--batch", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    code, _, err = jobwire(capsys, "copy", "--from", db, "--to", "postgresql://postgres@127.0.0.1:1/test")
    assert code == 1 and "no such file" in err


def test_source_spellings() -> None:
    assert source_path("/data/jobwire.db") == "/data/jobwire.db"
    assert source_path("sqlite:jobwire.db") == "jobwire.db"
    assert source_path("sqlite:///data/jobwire.db") == "/data/jobwire.db"


def test_the_copy_knows_every_column_of_both_schemas(tmp_path: Path, pg_url: str) -> None:
    """A migration that adds a column must teach `store/transfer.py` about it."""
    path = tmp_path / "schema.db"
    assert main(["migrate", "--db", str(path)]) == 0
    with sqlite3.connect(path) as conn:
        for table in TABLES:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")]
            assert sorted(columns) == sorted(table.columns), table.name

    async def postgres_columns() -> dict[str, list[str]]:
        conn = await asyncpg.connect(pg_url)
        try:
            found = await conn.fetch("SELECT table_name, column_name FROM information_schema.columns "
                                     "WHERE table_schema = 'public'")
        finally:
            await conn.close()
        out: dict[str, list[str]] = {}
        for table, column in found:
            out.setdefault(table, []).append(column)
        return out

    columns = asyncio.run(postgres_columns())
    own = {"events": {"id", "xid"}}  # PostgreSQL's own, filled by their defaults
    for table in TABLES:
        assert sorted(set(columns[table.name]) - own.get(table.name, set())) == sorted(table.columns), table.name
    assert set(columns) - {t.name for t in TABLES} == {"leaders", "jobwire_schema"}


# ---------------------------------------------------------------------- a server on the target


def test_a_job_running_at_copy_time_is_rescued_by_a_server_on_the_target(
        tmp_path: Path, empty_url: str, start_server: StartServer) -> None:
    source = tmp_path / "jobwire.db"

    async def build() -> str:
        store = SqliteJobStore(str(source))
        await store.open()
        try:
            now = time.time()
            (result,) = await store.insert_jobs([nj("noop", phases=("run",), payload=b"{}", max_attempts=3)],
                                                now, REQUEST_TTL)
            _, claimed = await store.claim_jobs(ClaimParams(now, 1, "gone-replica", now + 2.0))
            assert [c.job.id for c in claimed] == [result.job.id]
            return result.job.id
        finally:
            await store.close()

    job_id = asyncio.run(build())
    assert main(["copy", "--from", str(source), "--to", empty_url]) == 0
    server = start_server(db=empty_url, lease_ttl=1)  # type: ignore[arg-type]  # a URL, not a path
    with Client(server.target) as client:
        handle = client.handle(job_id)
        assert handle.result(timeout=30) == b"{}"
        job = handle.get()
    assert job.state is models.JobState.SUCCEEDED and job.attempt == 2
    (interrupted,) = job.error_history
    assert (interrupted.type, interrupted.phase, interrupted.attempt) == ("INTERRUPTED", "run", 1)
    assert "lease expired" in server.log()
