"""The worker protocol frame by frame, on an in-process server (real store and engine, gRPC on a
free port): precise statuses for bad frames, acks that never corrupt a job, idempotent resent
reports, the hand-off timeout, kinds kept in the database, the jobs:work scope, and a flood of
sessions that leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc, worker_pb2
from jobwire_server.api.auth import hash_token
from jobwire_server.app import App
from jobwire_server.domain.clock import SystemClock
from jobwire_server.handlers import Kind
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.remote import RawSession, hello
from tests.testkit import Harness, error_details, finished, watch

pytestmark = pytest.mark.timeout(60)

E = jobwire_pb2
W = worker_pb2
TWO = ("wp.two", ("one", "two"))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        await harness.stop_all()


@pytest.fixture
async def app(harness: Harness) -> App:
    return await harness.start(clock=SystemClock())  # type: ignore[arg-type]


def target(app: App) -> str:
    return f"127.0.0.1:{app.port}"


@pytest.fixture
async def stub(app: App) -> AsyncIterator[jobwire_pb2_grpc.JobServiceStub]:
    async with aio.insecure_channel(target(app)) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


async def connect(app: App, *kinds: tuple[str, tuple[str, ...]], **options: Any) -> RawSession:
    session = RawSession(target(app))
    session.send(hello(*(kinds or (TWO,)), **options))
    await session.recv_only("welcome")
    return session


async def assigned(session: RawSession) -> Any:
    assign = await session.recv_only("assign")
    session.send(started=W.PhaseStartedReport(job_id=assign.job_id, attempt=assign.attempt, phase=assign.phase))
    return assign


def done(assign: Any, phase: str | None = None, result: bytes = b"ok", attempt: int | None = None) -> W.ConnectRequest:
    return W.ConnectRequest(phase_done=W.PhaseDoneReport(
        job_id=assign.job_id, attempt=assign.attempt if attempt is None else attempt,
        phase=phase or assign.phase, result=result))


async def report(session: RawSession, message: W.ConnectRequest) -> Any:
    session.put(message)
    return await session.recv_only("ack")


async def enqueue(stub: Any, kind: str = "wp.two") -> Any:
    return (await stub.Enqueue(E.EnqueueRequest(kind=kind))).job


# ----------------------------------------------------------------------------- the stream itself


@pytest.mark.parametrize("first", [
    {"started": W.PhaseStartedReport(job_id="x", attempt=1, phase="one")},
    {"credit": W.WorkerCredit(slots=1)},
    {},
])
async def test_anything_but_a_hello_first_ends_the_stream_hello_required(app: App, first: dict[str, Any]) -> None:
    session = RawSession(target(app))
    session.send(**first)
    assert await session.status() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await session.reason())[0] == "HELLO_REQUIRED"


async def test_a_second_hello_ends_the_stream(app: App) -> None:
    session = await connect(app)
    session.send(hello(TWO))
    assert await session.status() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await session.reason())[0] == "HELLO_REQUIRED"


async def test_a_malformed_hello_lists_every_bad_field(app: App) -> None:
    session = RawSession(target(app))
    session.send(hello(("bad kind!", ("a", "a")), slots=0, worker_id=""))
    assert await session.status() == grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = await session.reason()
    assert reason == "INVALID_ARGUMENT"
    assert {"hello.worker_id", "hello.slots", "hello.kinds[0].name", "hello.kinds[0].phases"} <= set(fields)


async def test_a_batch_is_handled_in_order_and_may_not_nest(app: App, stub: Any) -> None:
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    first, second = done(assign, result=b"r1"), done(assign, phase="two", result=b"r2")
    session.send(batch=W.RequestBatch(messages=[first, second]))
    acks = [await session.recv_only("ack"), await session.recv_only("ack")]
    assert [(a.phase, a.next_phase) for a in acks] == [("one", "two"), ("two", "")]
    assert (await finished(stub, job.id)).job.state == E.JOB_STATE_SUCCEEDED
    session.send(batch=W.RequestBatch(messages=[W.ConnectRequest(batch=W.RequestBatch())]))
    assert await session.status() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_silent_session_is_ended_with_a_status_the_worker_sees(harness: Harness, stub: Any) -> None:
    app = await harness.start(clock=SystemClock(), db="silent.db", lease_ttl=1)  # type: ignore[arg-type]
    session = RawSession(target(app))
    session.send(hello(TWO))
    welcome = await session.recv_only("welcome")
    assert welcome.ping_interval.ToMilliseconds() == 250  # a quarter of the lease
    assert await session.status() == grpc.StatusCode.UNAVAILABLE  # no ping for three intervals
    assert (await session.reason())[0] == "WORKER_SILENT"
    assert app.remote.sessions == 0


async def test_an_empty_message_after_the_hello_is_invalid(app: App) -> None:
    session = await connect(app)
    session.send()
    assert await session.status() == grpc.StatusCode.INVALID_ARGUMENT


async def test_other_phases_for_a_known_kind_are_refused_kind_mismatch(app: App, stub: Any) -> None:
    first = await connect(app)
    assert await first.close() == grpc.StatusCode.OK
    second = RawSession(target(app))
    second.send(hello(("wp.two", ("one",))))
    assert await second.status() == grpc.StatusCode.FAILED_PRECONDITION
    reason, _ = await second.reason()
    assert reason == "KIND_MISMATCH"
    assert "known with phases ['one', 'two']" in (await second.call.details() or "")
    job = await enqueue(stub)  # the known kind is unchanged
    assert [p.name for p in job.phases] == ["one", "two"]


async def test_a_kind_the_server_runs_in_process_cannot_be_declared(harness: Harness) -> None:
    local = Kind("wp.local")
    local.phase("run")(lambda ctx: b"")
    app = await harness.start(local, clock=SystemClock())  # type: ignore[arg-type]
    session = RawSession(target(app))
    session.send(hello(("wp.local", ("run",))))
    assert await session.status() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await session.reason())[0] == "KIND_IN_PROCESS"


# ----------------------------------------------------------------------------- reports


async def test_reports_about_jobs_the_session_does_not_hold_are_answered_not_written(app: App, stub: Any) -> None:
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    unknown = await report(session, W.ConnectRequest(phase_done=W.PhaseDoneReport(
        job_id="01a22900-0000-7000-8000-000000000000", attempt=1, phase="one", result=b"x")))
    assert (unknown.status, unknown.reason) == (W.ACK_STATUS_REJECTED, "UNKNOWN_JOB")
    malformed = await report(session, W.ConnectRequest(progress=W.ProgressReport(job_id="nope", attempt=1,
                                                                                 phase="one", percent=5)))
    assert (malformed.status, malformed.reason) == (W.ACK_STATUS_REJECTED, "INVALID_REPORT")
    wrong = await report(session, done(assign, attempt=assign.attempt + 1))
    assert (wrong.status, wrong.reason) == (W.ACK_STATUS_FENCED, "WRONG_ATTEMPT")
    phase = await report(session, done(assign, phase="two"))
    assert (phase.status, phase.reason) == (W.ACK_STATUS_REJECTED, "WRONG_PHASE")
    big = await report(session, done(assign, result=b"x" * (app.config.max_payload_bytes + 1)))
    assert (big.status, big.reason) == (W.ACK_STATUS_REJECTED, "RESULT_TOO_LARGE")
    still = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert still.state == E.JOB_STATE_RUNNING and still.attempt == 1
    assert [p.state for p in still.phases] == [E.PHASE_STATE_RUNNING, E.PHASE_STATE_PENDING]
    ok = await report(session, done(assign, result=b"first"))
    assert (ok.status, ok.next_phase) == (W.ACK_STATUS_OK, "two")
    assert (await stub.GetJob(E.GetJobRequest(id=job.id))).phases[0].result == b"first"


async def test_a_resent_phase_done_gets_the_same_answer_and_writes_once(app: App, stub: Any) -> None:
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    first = await report(session, done(assign, result=b"r1"))
    again = await report(session, done(assign, result=b"r1"))
    assert (first.status, first.next_phase) == (again.status, again.next_phase) == (W.ACK_STATUS_OK, "two")
    last = await report(session, done(assign, phase="two", result=b"r2"))
    assert (last.status, last.next_phase) == (W.ACK_STATUS_OK, "")
    resent = await report(session, done(assign, phase="two", result=b"r2"))
    assert resent == last
    events = await watch(stub, job.id)
    assert [e.phase for e in events if e.type == E.EVENT_TYPE_PHASE_SUCCEEDED] == ["one", "two"]


async def test_an_assignment_never_started_is_requeued_without_spending_an_attempt(app: App, stub: Any) -> None:
    app.remote._assign_timeout = 0.3
    silent = await connect(app, slots=1)
    job = await enqueue(stub)
    first = await silent.recv_only("assign")
    cancel = await silent.recv_only("cancel")  # taken back: the worker is told to drop it
    assert (cancel.job_id, cancel.attempt) == (first.job_id, first.attempt)
    await silent.close()
    session = await connect(app, worker_id="raw-2")
    second = await assigned(session)
    assert (second.job_id, second.attempt) == (job.id, 2)
    await report(session, done(second))
    await report(session, done(second, phase="two"))
    final = await finished(stub, job.id)
    assert final.job.state == E.JOB_STATE_SUCCEEDED
    assert final.job.counted_attempts == 1  # the unstarted hand-off did not count
    assert [(e.type, e.interrupted) for e in final.job.error_history] == [("NOT_STARTED", True)]


async def test_a_cancel_is_pushed_and_a_worker_that_ignores_it_is_abandoned_then_fenced(app: App, stub: Any) -> None:
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    await stub.CancelJob(E.CancelJobRequest(id=job.id, reason="stop"))
    cancel = await session.recv_only("cancel")
    assert (cancel.job_id, cancel.reason) == (job.id, "stop")
    final = await finished(stub, job.id)  # cancel_grace 0.5 s in the harness, then abandoned
    assert final.job.state == E.JOB_STATE_CANCELLED
    late = await report(session, done(assign))
    assert late.status == W.ACK_STATUS_FENCED
    assert (await stub.GetJob(E.GetJobRequest(id=job.id))).phases[0].result == b""


async def test_a_started_report_after_a_cancel_does_not_stop_the_grace(app: App, stub: Any) -> None:
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    await stub.CancelJob(E.CancelJobRequest(id=job.id, reason="stop"))
    await session.recv_only("cancel")
    # The worker's `started` crossed the cancel on the wire; it ignores the cancel from then on.
    session.put(W.ConnectRequest(started=W.PhaseStartedReport(job_id=job.id, attempt=1, phase=assign.phase)))
    final = await finished(stub, job.id)  # still abandoned after the grace (0.5 s in the harness)
    assert final.job.state == E.JOB_STATE_CANCELLED


async def test_a_phase_past_its_timeout_is_cancelled_and_fails_timeout(app: App, stub: Any) -> None:
    app.remote._cancel_grace = 30.0
    session = await connect(app)
    job = (await stub.Enqueue(E.EnqueueRequest(kind="wp.two", timeout=Duration(nanos=300_000_000)))).job
    assign = await assigned(session)
    assert assign.phase_timeout.ToMilliseconds() == 300
    cancel = await session.recv_only("cancel")
    assert "exceeded its timeout" in cancel.reason
    session.put(W.ConnectRequest(phase_done=W.PhaseDoneReport(job_id=job.id, attempt=1, phase="one", cancelled=True)))
    ack = await session.recv_only("ack")
    assert (ack.status, ack.next_phase) == (W.ACK_STATUS_OK, "")
    again = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert again.state == E.JOB_STATE_RETRYING
    assert (again.error.type, again.error.retryable) == ("TIMEOUT", True)


async def test_a_cancel_between_phases_stops_at_the_boundary(app: App, stub: Any) -> None:
    app.remote._cancel_grace = 30.0
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    await stub.CancelJob(E.CancelJobRequest(id=job.id, reason="stop"))
    await session.recv_only("cancel")
    ack = await report(session, done(assign, result=b"kept"))  # the phase finished anyway
    assert (ack.status, ack.next_phase) == (W.ACK_STATUS_CANCELLED, "")
    final = await stub.GetJob(E.GetJobRequest(id=job.id))
    assert final.state == E.JOB_STATE_CANCELLED
    assert (final.phases[0].result, final.phases[1].state) == (b"kept", E.PHASE_STATE_CANCELLED)


async def test_a_slot_comes_back_with_the_final_ack(app: App, stub: Any) -> None:
    session = await connect(app, slots=1)
    first, second = await enqueue(stub), await enqueue(stub)
    assign = await assigned(session)
    assert (await stub.GetJob(E.GetJobRequest(id=second.id))).state == E.JOB_STATE_QUEUED  # no credit left
    await report(session, done(assign))
    assert (await stub.GetJob(E.GetJobRequest(id=second.id))).state == E.JOB_STATE_QUEUED  # not final yet
    final = await report(session, done(assign, phase="two"))
    assert (final.status, final.next_phase) == (W.ACK_STATUS_OK, "")
    nxt = await assigned(session)  # the commit that finished the first claimed the second
    assert {assign.job_id, nxt.job_id} == {first.id, second.id}
    assert session.batches == 1  # the final ack and the next assignment went out together


async def test_a_job_taken_back_keeps_its_slot_until_the_worker_closes_it(app: App, stub: Any) -> None:
    session = await connect(app, slots=1)
    job, other = await enqueue(stub), await enqueue(stub)
    assign = await assigned(session)
    await stub.CancelJob(E.CancelJobRequest(id=job.id))
    await session.recv_only("cancel")
    assert (await finished(stub, job.id)).job.state == E.JOB_STATE_CANCELLED  # abandoned after the grace
    assert (await stub.GetJob(E.GetJobRequest(id=other.id))).state == E.JOB_STATE_QUEUED  # its handler may still run
    closing = await report(session, done(assign))  # the handler returned at last
    assert closing.status == W.ACK_STATUS_FENCED
    assert (await assigned(session)).job_id == other.id


async def test_a_reconnecting_worker_keeps_its_job_and_resends_its_report(app: App, stub: Any) -> None:
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    await session.close()  # the stream drops while the phase runs
    back = RawSession(target(app))
    back.send(hello(TWO, held=((job.id, assign.attempt, "one"),)))
    welcome = await back.recv_only("welcome")
    assert list(welcome.keep_job_ids) == [job.id]
    ack = await report(back, done(assign))
    assert (ack.status, ack.next_phase) == (W.ACK_STATUS_OK, "two")


async def test_a_declared_kind_is_known_with_no_worker_connected_even_after_a_restart(
        harness: Harness, tmp_path: Path) -> None:
    first = await harness.start(clock=SystemClock(), db="kinds.db")  # type: ignore[arg-type]
    session = await connect(first)
    await session.close()
    await first.stop()
    again = await harness.start(clock=SystemClock(), db="kinds.db")  # type: ignore[arg-type]
    async with aio.insecure_channel(target(again)) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        job = await enqueue(stub)
        assert (job.state, [p.name for p in job.phases]) == (E.JOB_STATE_QUEUED, ["one", "two"])
        with pytest.raises(aio.AioRpcError) as refused:
            await enqueue(stub, "wp.never-declared")
    assert error_details(refused.value)[0] == "UNKNOWN_KIND"


async def test_a_flood_of_sessions_leaves_nothing_behind(app: App, stub: Any) -> None:
    assert app.workers is not None
    for _ in range(5):
        sessions = [RawSession(target(app)) for _ in range(40)]
        for index, session in enumerate(sessions):
            session.send(hello(TWO, worker_id=f"flood-{index}"))
        for session in sessions[:30]:
            await session.recv_only("welcome")
        codes = await asyncio.gather(*(s.close() for s in sessions[:20]))  # half-closed, answered OK
        assert set(codes) == {grpc.StatusCode.OK}
        for session in sessions[20:]:
            await session.drop()  # the connection goes away with the stream open
        async with asyncio.timeout(10):
            while app.workers.open_streams:
                await app.workers.stream_ended.wait()
    assert app.workers.open_streams == 0
    assert app.remote.sessions == 0 and app.remote.running_ids() == []
    # Still serving: a job runs on the next worker.
    session = await connect(app)
    job = await enqueue(stub)
    assign = await assigned(session)
    await report(session, done(assign))
    await report(session, done(assign, phase="two"))
    assert (await finished(stub, job.id)).job.state == E.JOB_STATE_SUCCEEDED
    leftover = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("worker-")]
    assert len(leftover) == 3  # the open session's reader, sender and watchdog only


# ----------------------------------------------------------------------------- access


async def test_jobs_work_allows_connect_and_nothing_else(harness: Harness, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\nname = "worker"\nsha256 = "{hash_token("w-secret")}"\nscopes = ["jobs:work"]\n'
                      f'queues = ["media"]\n')
    app = await harness.start(clock=SystemClock(), tokens_file=str(tokens))  # type: ignore[arg-type]
    metadata = (("authorization", "Bearer w-secret"),)
    allowed = RawSession(target(app), metadata=metadata)
    allowed.send(hello(TWO, queues=("media",)))
    assert (await allowed.recv_only("welcome")).session_id
    await allowed.close()
    other_queue = RawSession(target(app), metadata=metadata)
    other_queue.send(hello(TWO, queues=("default",)))
    assert await other_queue.status() == grpc.StatusCode.PERMISSION_DENIED
    async with aio.insecure_channel(target(app)) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await jobwire_pb2_grpc.JobServiceStub(channel).Enqueue(E.EnqueueRequest(kind="wp.two"), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_remote_job_is_traced_like_an_in_process_one(harness: Harness) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = await harness.start(clock=SystemClock(), tracer_provider=provider)  # type: ignore[arg-type]
    session = await connect(app)
    async with aio.insecure_channel(target(app)) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)
        job = await enqueue(stub)
        assign = await assigned(session)
        await report(session, done(assign))
        await report(session, W.ConnectRequest(phase_done=W.PhaseDoneReport(
            job_id=job.id, attempt=1, phase="two", failure=W.PhaseFailure(type="Boom", message="no", retryable=False))))
        await finished(stub, job.id)
    spans = exporter.get_finished_spans()
    (job_span,) = [s for s in spans if s.name == "job wp.two"]
    assert job_span.context is not None and job_span.status.status_code is StatusCode.ERROR
    phases = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == job_span.context.span_id}
    assert set(phases) == {"phase one", "phase two"}
    assert phases["phase one"].attributes is not None and phases["phase one"].attributes["jobwire.phase.outcome"] == (
        "succeeded")
    assert phases["phase two"].status.status_code is StatusCode.ERROR
