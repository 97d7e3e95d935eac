"""The PostgreSQL store: the conformance suite on a fresh database cloned from a migrated
template, plus what only PostgreSQL has (schema versions, start-up errors, notifications)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace as with_fields

import asyncpg
import pytest
from jobwire_server.domain.deliveries import AttemptOutcome, AttemptRecord, Verdict
from jobwire_server.domain.models import JobError, Webhook
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.domain.transitions import fail, finish_phase
from jobwire_server.store.postgres import PostgresJobStore
from jobwire_server.store.postgres.schema import SCHEMA_VERSION
from jobwire_server.store.postgres.store import StoreError, display_url

from tests.pg import admin_async, create_database, drop_database, url_of
from tests.store.conformance import T0, StoreConformance, claim_one, insert, nj
from tests.store.kind_conformance import KindConformance
from tests.store.queue_conformance import QueueConformance, RemoteQueueConformance
from tests.store.schedule_conformance import ScheduleConformance

pytestmark = pytest.mark.timeout(60)


class TestPostgresStore(StoreConformance, ScheduleConformance, KindConformance, QueueConformance,
                        RemoteQueueConformance):
    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[PostgresJobStore]:
        store = PostgresJobStore(pg_url, pool_size=4)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def reopen(self, pg_url: str) -> Callable[[], PostgresJobStore]:
        return lambda: PostgresJobStore(pg_url, pool_size=2)

    @pytest.fixture
    def newer_url(self) -> Iterator[str]:
        name = create_database()
        try:
            yield url_of(name)
        finally:
            drop_database(name)

    @pytest.fixture
    async def newer_schema_store(self, newer_url: str) -> AsyncIterator[PostgresJobStore]:
        conn = await asyncpg.connect(newer_url)
        try:
            await conn.execute("CREATE TABLE jobwire_schema (version integer NOT NULL)")
            await conn.execute("INSERT INTO jobwire_schema VALUES ($1)", SCHEMA_VERSION + 1)
        finally:
            await conn.close()
        store = PostgresJobStore(newer_url)
        yield store
        await store.close()

    # ------------------------------------------------------------------ PostgreSQL only

    async def test_a_fresh_database_is_migrated_once_with_its_version_recorded(self, pg_url: str) -> None:
        store = PostgresJobStore(pg_url)
        await store.open()  # the template was migrated already: nothing is applied twice
        try:
            assert await store.schema_version() == SCHEMA_VERSION
            (job,) = await insert(store, nj())
            assert (await store.get_job(job.id)).id == job.id
        finally:
            await store.close()

    async def test_newer_schema_error_names_the_database_and_both_versions(
            self, newer_schema_store: PostgresJobStore, newer_url: str) -> None:
        with pytest.raises(Exception) as info:
            await newer_schema_store.open()
        message = str(info.value)
        assert newer_url.rsplit("/", 1)[1] in message
        assert str(SCHEMA_VERSION + 1) in message and f"({SCHEMA_VERSION})" in message

    async def test_an_unreachable_server_is_a_one_line_error(self) -> None:
        store = PostgresJobStore("postgresql://postgres@127.0.0.1:1/test")
        with pytest.raises(StoreError) as info:
            await store.open()
        message = str(info.value)
        assert "\n" not in message and "127.0.0.1:1" in message and "reachable" in message

    async def test_a_missing_database_is_a_one_line_error(self) -> None:
        store = PostgresJobStore(url_of("jobwire_no_such_database"))
        with pytest.raises(StoreError, match=r"jobwire_no_such_database.*create the database"):
            await store.open()

    async def test_a_role_that_does_not_exist_is_a_one_line_error(self) -> None:
        store = PostgresJobStore("postgresql://jobwire_nobody@127.0.0.1:5432/test")
        with pytest.raises(StoreError, match="jobwire_nobody"):
            await store.open()

    async def test_a_role_without_rights_is_refused_at_start(self, newer_url: str) -> None:
        await admin_async("DROP ROLE IF EXISTS jobwire_readonly", "CREATE ROLE jobwire_readonly LOGIN")
        try:
            conn = await asyncpg.connect(newer_url)
            try:
                await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            finally:
                await conn.close()
            store = PostgresJobStore(newer_url.replace("postgres@", "jobwire_readonly@"))
            with pytest.raises(StoreError, match=r"permission denied.*CREATE on the database"):
                await store.open()
        finally:
            await admin_async(f"DROP DATABASE IF EXISTS {newer_url.rsplit('/', 1)[1]} WITH (FORCE)",
                              "DROP ROLE IF EXISTS jobwire_readonly")

    def test_passwords_never_reach_messages(self) -> None:
        assert display_url("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
        assert display_url("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_events_restored_from_a_server_further_ahead_are_marked_past(pg_url: str) -> None:
    store = PostgresJobStore(pg_url)
    await store.open()
    try:
        (job,) = await insert(store, nj())
        conn = await asyncpg.connect(pg_url)
        try:
            # What a dump from a server whose transaction count is far ahead brings.
            await conn.execute("UPDATE events SET xid = (pg_current_xact_id()::text::bigint + 1000000)::text::xid8")
        finally:
            await conn.close()
    finally:
        await store.close()
    again = PostgresJobStore(pg_url)
    await again.open()
    try:
        cursor = await again.tail_start()
        events, _ = await again.tail_events(cursor, 100)
        assert [e.job_id for e in events] == [], "restored events are history, not news"
        assert [e.sequence for e in await again.events_after(job.id, 0, 10)] == [1]
    finally:
        await again.close()


async def test_text_holding_nul_is_stored_with_a_replacement_character(pg_url: str) -> None:
    # PostgreSQL text cannot hold NUL: a handler's error message with one must not fail the batch.
    store = PostgresJobStore(pg_url)
    await store.open()
    try:
        await insert(store, nj(phases=("only",)))
        running = await claim_one(store)
        boom = JobError("bad \x00 byte", "ValueError", False, "only", 1, False, T0 + 1)
        (done,) = await store.apply_changes([fail(running, boom, T0 + 1)])
        assert done is not None
        stored = await store.get_job(running.id)
        assert stored.state is JobState.FAILED
        assert stored.error is not None and stored.error.message == "bad \ufffd byte"
    finally:
        await store.close()


async def test_label_filters_can_use_the_labels_index(pg_url: str) -> None:
    """`jobs_labels` (jsonb_ops) answers key presence (`?`) as well as containment (`@>`): with the
    planner kept off sequential and plain index scans, both are bitmap scans of it (the earlier
    jsonb_path_ops index could not answer `?`). Timings over a million jobs: bench/search.py."""
    store = PostgresJobStore(pg_url)
    await store.open()
    try:
        await insert(store, nj(labels={"env": "prod", "customer": "c1"}), nj(labels={"env": "dev"}), nj())
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("ANALYZE jobs")
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("SET enable_indexscan = off")
        for where in ("labels ? 'customer'", """labels @> '{"env": "prod"}'""",
                      """(labels @> '{"env": "prod"}' OR labels @> '{"env": "dev"}')"""):
            plan = "\n".join(row[0] for row in await conn.fetch(
                f"EXPLAIN SELECT id FROM jobs WHERE {where} AND labels <> '{{}}' ORDER BY id DESC LIMIT 51"))
            assert "Bitmap Index Scan on jobs_labels" in plan, plan
        plan = "\n".join(row[0] for row in await conn.fetch(
            "EXPLAIN SELECT id FROM jobs WHERE state = ANY('{CANCELLED,FAILED,STALE,SUCCEEDED}'::text[]) "
            "AND finish_time >= now() - interval '1 hour' ORDER BY id DESC LIMIT 51"))
        assert "jobs_by_finish" in plan, plan
    finally:
        await conn.close()


async def test_a_receiver_answer_holding_nul_is_logged_with_a_replacement_character(pg_url: str) -> None:
    # A webhook receiver may answer anything: its bytes must not fail the write that logs them.
    store = PostgresJobStore(pg_url)
    await store.open()
    try:
        hook = Webhook("https://h.example.com/x", (EventType.SUCCEEDED,))
        await insert(store, with_fields(nj(phases=("only",)), webhook=hook))
        running = await claim_one(store)
        await store.apply_changes([finish_phase(running, 0, b"", T0 + 1)])
        (taken,) = await store.take_deliveries(T0 + 2, 10, lease_until=T0 + 60)
        record = AttemptRecord(1, T0 + 2, hook.url, 500, 0.1, "bad\x00body", "HTTP 500\x00")
        await store.record_delivery_attempt(AttemptOutcome(taken, record, Verdict.RETRY, next_at=T0 + 10), T0 + 2,
                                            None)
        (info,) = await store.job_deliveries(running.id)
        assert info.log[0].response == "bad\ufffdbody" and info.last_error == "HTTP 500\ufffd"
    finally:
        await store.close()
