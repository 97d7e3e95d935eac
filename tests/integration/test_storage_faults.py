"""Storage that cannot write: precise statuses, health NOT_SERVING while it lasts, recovery on its own.

The faults are real SQLite errors on the server's own writer connection: `PRAGMA max_page_count`
at the current size makes every write that needs a page fail with SQLITE_FULL ("database or disk
is full", exactly what a full disk gives), and `PRAGMA query_only` makes writes fail with
SQLITE_READONLY (what a read-only file or file system gives).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App, StartupError
from jobwire_server.domain.models import NewJob
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.store.sqlite.store import SqliteJobStore, StoreError

from tests.testkit import Gate, Harness, Recorder, enqueue, error_details, gate, new_job

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BIG = b"x" * 60_000  # a job that needs new pages


async def _on_writer(app: App, sql: str) -> Any:
    store = app.store
    assert isinstance(store, SqliteJobStore) and store._writer is not None
    return await store._writer.run(lambda conn: conn.execute(sql).fetchall())


async def fill_disk(app: App) -> None:
    (count,) = (await _on_writer(app, "PRAGMA page_count"))[0]
    await _on_writer(app, f"PRAGMA max_page_count = {count}")


async def free_disk(app: App) -> None:
    await _on_writer(app, "PRAGMA max_page_count = 1073741823")


class Health:
    """Follows the server's health Watch stream for one service name."""

    def __init__(self, channel: aio.Channel, service: str) -> None:
        self._call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))

    async def until(self, status: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            async for reply in self._call:
                if reply.status == status:
                    return
        raise AssertionError("health stream ended")

    def cancel(self) -> None:
        self._call.cancel()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.stop_all()


@pytest.fixture
async def channel(harness: Harness) -> AsyncIterator[tuple[App, aio.Channel]]:
    app = await harness.start(gate)
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield app, ch


async def _enqueue_error(stub: Any, payload: bytes = BIG) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=payload))
    return info.value


async def test_a_full_disk_answers_resource_exhausted_turns_health_off_and_recovers_by_itself(
        channel: tuple[App, aio.Channel], caplog: pytest.LogCaptureFixture) -> None:
    app, ch = channel
    stub = jobwire_pb2_grpc.JobServiceStub(ch)
    kept = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}", run_at={"seconds": 4_000_000_000}))).job
    health = [Health(ch, ""), Health(ch, "jobwire.v1.JobService")]
    for h in health:
        await h.until(SERVING)
    caplog.set_level(logging.INFO, logger="jobwire.writer")
    await fill_disk(app)

    errors = [await _enqueue_error(stub) for _ in range(5)]
    for err in errors:
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "database or disk is full" in (err.details() or "")
        assert app.config.db in (err.details() or ""), "the message names the database file"
        assert error_details(err)[0] == "STORAGE_FULL"
    for h in health:
        await h.until(NOT_SERVING)
    # Reads keep working.
    assert (await stub.GetJob(pb.GetJobRequest(id=kept.id))).id == kept.id
    with pytest.raises(grpc.aio.AioRpcError) as cancel:
        await stub.CancelJob(pb.CancelJobRequest(id=kept.id))
    assert cancel.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    await free_disk(app)
    for h in health:
        await h.until(SERVING)
        h.cancel()
    made = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=BIG))).job
    assert (await stub.GetJob(pb.GetJobRequest(id=made.id))).id == made.id
    lines = [r.getMessage() for r in caplog.records if r.name == "jobwire.writer"]
    assert sum("cannot take writes" in line for line in lines) == 1, lines
    assert sum("takes writes again" in line for line in lines) == 1, lines
    assert not any(r.exc_info for r in caplog.records), "no traceback per failed write"


async def test_a_read_only_database_answers_unavailable(channel: tuple[App, aio.Channel]) -> None:
    app, ch = channel
    stub = jobwire_pb2_grpc.JobServiceStub(ch)
    health = Health(ch, "")
    await _on_writer(app, "PRAGMA query_only = ON")
    err = await _enqueue_error(stub, b"{}")
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err
    assert error_details(err)[0] == "STORAGE_UNAVAILABLE"
    assert "readonly" in (err.details() or "")
    await health.until(NOT_SERVING)
    await _on_writer(app, "PRAGMA query_only = OFF")
    await health.until(SERVING)
    health.cancel()
    await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}", run_at={"seconds": 4_000_000_000}))


async def test_the_engine_holds_its_writes_while_storage_fails_and_loses_none(harness: Harness) -> None:
    app = await harness.start(gate)
    rec = Recorder(app.hub)
    async with Gate() as g:
        jobs = [await enqueue(app, gate, g.payload()) for _ in range(3)]
        calls = await g.take(3)
        await _on_writer(app, "PRAGMA query_only = ON")
        for call in calls:
            call.release()  # their outcomes cannot be written: held until the storage takes writes
        async with asyncio.timeout(10):
            while app.writer.storage_error is None:
                await app.writer.storage_changed.wait()
        assert [(await app.service.get(j.id)).state for j in jobs] == [JobState.RUNNING] * 3
        await _on_writer(app, "PRAGMA query_only = OFF")
        for job in jobs:
            assert (await rec.wait_final(job.id, within=10)).type is EventType.SUCCEEDED
    assert app.writer.storage_error is None


def _corrupt(path: Path, table: str = "jobs") -> None:
    """Scribble over the root pages of `table` and its indexes (every read of it meets one)."""
    with sqlite3.connect(path) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        roots = [row[0] for row in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name = ? AND rootpage > 0", (table,))]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        for page in roots:
            f.seek((page - 1) * page_size)
            f.write(b"\xff" * page_size)


async def _created(path: Path, *jobs: NewJob) -> list[str]:
    store = SqliteJobStore(str(path))
    await store.open()
    try:
        return [r.job.id for r in await store.insert_jobs(list(jobs), time.time(), 60)] if jobs else []
    finally:
        await store.close()


async def test_a_corrupt_database_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    await _created(path)
    _corrupt(path)
    refused = SqliteJobStore(str(path))
    with pytest.raises(StoreError) as info:
        await refused.open()
    message = str(info.value)
    assert str(path) in message and "corrupt" in message and "\n" not in message


async def test_without_the_check_a_damaged_queue_still_fails_the_start_instead_of_hanging(
        harness: Harness) -> None:
    path = harness.directory / "damaged.db"
    await _created(path)
    _corrupt(path)
    async with asyncio.timeout(20):
        with pytest.raises(StartupError) as info:
            await harness.start(gate, db="damaged.db", integrity_check=False)
    assert str(path) in str(info.value) and "malformed" in str(info.value)


async def test_corruption_found_while_serving_answers_data_loss_and_turns_health_off(harness: Harness) -> None:
    path = harness.directory / "damaged.db"
    (job_id,) = await _created(path, new_job(gate, b"{}", now=time.time(), delay=1e9))  # never due
    _corrupt(path, "events")
    app = await harness.start(gate, db="damaged.db", integrity_check=False)  # the check skipped: it starts
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = jobwire_pb2_grpc.JobServiceStub(ch)
        health = Health(ch, "")
        await health.until(SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchJob(pb.WatchJobRequest(id=job_id, after_sequence=1)):
                pass
        assert info.value.code() is grpc.StatusCode.DATA_LOSS, info.value
        assert error_details(info.value)[0] == "STORAGE_CORRUPT"
        assert str(path) in (info.value.details() or "")
        await health.until(NOT_SERVING)
        health.cancel()
