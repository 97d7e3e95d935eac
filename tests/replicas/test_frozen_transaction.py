"""A replica frozen inside a transaction (SIGSTOP, a paused VM) must not hold up the others.

Its session sits "idle in transaction" with the row locks it took; another replica's rescue of
one of those jobs (`SELECT … FOR UPDATE` in its writer's transaction) would wait on them for as
long as the freeze lasts, and with it every write of that replica: no commits, no lease
renewals, no rescues. The store sets `idle_in_transaction_session_timeout` (a default, or the
URL's), so PostgreSQL ends the frozen session and the others go on.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from jobwire_server.domain.models import JobError
from jobwire_server.domain.states import JobState
from jobwire_server.domain.transitions import rescue_expired
from jobwire_server.store.postgres import PostgresJobStore
from jobwire_server.store.postgres.store import IDLE_IN_TRANSACTION_TIMEOUT, connection_settings

from tests.store.conformance import T0, claim_one, insert, nj

pytestmark = pytest.mark.timeout(60)


def test_sessions_end_a_transaction_left_idle_unless_the_url_says_otherwise() -> None:
    _, settings = connection_settings("postgresql://u@h:5432/db")
    assert settings["idle_in_transaction_session_timeout"] == IDLE_IN_TRANSACTION_TIMEOUT
    dsn, settings = connection_settings("postgresql://u@h:5432/db?idle_in_transaction_session_timeout=1s&sslmode=disable")
    assert settings["idle_in_transaction_session_timeout"] == "1s"
    assert dsn == "postgresql://u@h:5432/db?sslmode=disable"


async def test_a_replica_frozen_in_a_transaction_does_not_block_the_others_rescue(pg_url: str) -> None:
    frozen, other = PostgresJobStore(pg_url, pool_size=2), PostgresJobStore(pg_url, pool_size=2)
    await frozen.open()
    await other.open()
    try:
        await insert(frozen, nj(phases=("only",)))
        job = await claim_one(frozen)
        # The frozen replica's writer, stopped between two statements of a transaction: the
        # job's row lock taken, nothing sent after it (as when SIGSTOP lands mid-batch).
        writer = await frozen._writer_connection()
        stuck = writer.transaction()
        await stuck.start()
        await writer.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)

        late = T0 + 100
        lost = JobError("worker lost", "INTERRUPTED", True, "only", job.attempt, True, late)
        started = time.monotonic()
        async with asyncio.timeout(float(IDLE_IN_TRANSACTION_TIMEOUT.removesuffix("s")) + 10):
            rescued, committed = await other.update_job(job.id, lambda j: rescue_expired(j, lost, late))
        waited = time.monotonic() - started
        assert committed is not None and rescued.state is JobState.QUEUED
        assert waited >= 1.0, "the lock was held until PostgreSQL ended the idle session"
        # The frozen replica's next write reconnects; its own transaction was rolled back.
        await frozen.probe()
        assert (await frozen.get_job(job.id)).state is JobState.QUEUED
    finally:
        await frozen.close()
        await other.close()
