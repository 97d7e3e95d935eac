"""Remote workers on PostgreSQL replicas: a kind a worker declared on one replica is known to the
others (Enqueue there validates it), and its jobs run on the worker wherever they were enqueued."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc, worker_pb2
from jobwire_server.domain.clock import SystemClock

from tests.remote import RawSession, hello
from tests.testkit import Harness, finished

pytestmark = pytest.mark.timeout(60)

E = jobwire_pb2
W = worker_pb2


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        await harness.stop_all()


async def test_a_kind_declared_on_one_replica_is_known_on_another(harness: Harness, pg_url: str) -> None:
    first = await harness.start(clock=SystemClock(), db=pg_url)  # type: ignore[arg-type]
    second = await harness.start(clock=SystemClock(), db=pg_url)  # type: ignore[arg-type]
    session = RawSession(f"127.0.0.1:{first.port}")
    session.send(hello(("rr.kind", ("one",))))
    await session.recv_only("welcome")
    async with aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        job = (await stub.Enqueue(E.EnqueueRequest(kind="rr.kind"))).job  # enqueued on the other replica
        assign = await session.recv_only("assign")
        assert assign.job_id == job.id
        session.put(W.ConnectRequest(phase_done=W.PhaseDoneReport(job_id=job.id, attempt=assign.attempt,
                                                                  phase="one", result=b"done")))
        ack = await session.recv_only("ack")
        assert (ack.status, ack.next_phase) == (W.ACK_STATUS_OK, "")
        final = await finished(stub, job.id)
    assert (final.job.state, final.job.phases[0].result) == (E.JOB_STATE_SUCCEEDED, b"done")
    await session.close()
