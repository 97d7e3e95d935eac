"""A PostgreSQL server that stops taking writes (read-only, connections cut): the same statuses,
health and recovery as on SQLite, with the database named by its URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc import aio
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from jobwire_server.app import App

from tests.integration.test_storage_faults import NOT_SERVING, SERVING, Health
from tests.pg import ADMIN_URL
from tests.testkit import Harness, error_details, gate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def served(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[App, aio.Channel, str]]:
    harness = Harness(tmp_path)
    app = await harness.start(gate, db=pg_url)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield app, ch, pg_url.rsplit("/", 1)[1]
    finally:
        await harness.stop_all()


async def admin(*statements: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def cut_connections(database: str) -> str:
    return (f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' "
            "AND pid <> pg_backend_pid()")


async def test_connections_cut_by_the_server_are_opened_again(served: tuple[App, aio.Channel, str]) -> None:
    _app, ch, database = served
    stub = jobwire_pb2_grpc.JobServiceStub(ch)
    await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}"))
    await admin(cut_connections(database))
    # The first write may meet the dead session (UNAVAILABLE, which clients retry); then it works.
    async with asyncio.timeout(20):
        while True:
            try:
                made = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}"))).job
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.UNAVAILABLE, err
                await asyncio.sleep(0.05)  # sleep-ok: a client's backoff before it retries UNAVAILABLE
    assert (await stub.GetJob(pb.GetJobRequest(id=made.id))).id == made.id


async def test_a_read_only_database_answers_unavailable_and_recovers(served: tuple[App, aio.Channel, str]) -> None:
    _app, ch, database = served
    stub = jobwire_pb2_grpc.JobServiceStub(ch)
    health = Health(ch, "")
    await health.until(SERVING)
    await admin(f"ALTER DATABASE {database} SET default_transaction_read_only = on", cut_connections(database))
    try:
        async with asyncio.timeout(20):
            while True:  # the first write may meet the cut session; the next ones the read-only one
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}"))
                if "read-only" in (info.value.details() or ""):
                    break
        err = info.value
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err
        assert error_details(err)[0] == "STORAGE_UNAVAILABLE"
        assert database in (err.details() or ""), "the message names the database"
        await health.until(NOT_SERVING)
    finally:
        await admin(f"ALTER DATABASE {database} RESET default_transaction_read_only")
    await health.until(SERVING, within=15)
    health.cancel()
    made = (await stub.Enqueue(pb.EnqueueRequest(kind="tk.gate", payload=b"{}"))).job
    assert made.id
