"""The queue over real loopback gRPC, on one shared `jobwire serve` with the test kinds:
enqueue validation, dedupe_key, request_id, malformed payloads, events and WatchJob replay,
cancel and retry. Gate kinds (tests/testkit.py) hold a handler until the test releases it."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import ServerProcess
from tests.testkit import FAIL_PERMANENTLY, Gate, error_details, running, stream, until_event, watch

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

S = pb.JobState
T = pb.EventType
P = pb.PhaseState
FAR = duration_pb2.Duration(seconds=3600)  # keeps a job SCHEDULED for the whole test
Stub = jobwire_pb2_grpc.JobServiceStub


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory: Path = tmp_path_factory.mktemp("queue-api")
    with running(directory, handlers="tests.testkit", concurrency=8, cancel_grace=0.5) as server:
        yield server


@pytest.fixture
async def stub(shared: ServerProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(shared.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    async with Gate() as gate:
        yield gate


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def enqueue(stub: Stub, kind: str, payload: bytes = b"", **fields: object) -> pb.EnqueueResponse:
    return await stub.Enqueue(pb.EnqueueRequest(kind=kind, payload=payload, **fields), timeout=10)


async def get(stub: Stub, job_id: str) -> pb.Job:
    return await stub.GetJob(pb.GetJobRequest(id=job_id), timeout=10)


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


# ----------------------------------------------------------------------------- enqueue


async def test_unknown_kind_is_invalid_argument(stub: Stub) -> None:
    err = await rpc_error(enqueue(stub, "no.such.kind"))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = error_details(err)
    assert reason == "UNKNOWN_KIND" and "no.such.kind" in fields["kind"] and "tk.gate" in fields["kind"]


@pytest.mark.parametrize("queue", ["a", "Queue.name-with_all.9", "q" * 128])
async def test_valid_queue_names_are_accepted(stub: Stub, queue: str) -> None:
    reply = await enqueue(stub, "noop", b"hi", queue=queue)
    assert reply.job.queue == queue
    events = await watch(stub, reply.job.id)
    assert events[-1].type == T.EVENT_TYPE_SUCCEEDED


@pytest.mark.parametrize("queue", ["has space", "slash/no", "colon:no", "ünïcode", "q" * 129, "tab\t"])
async def test_invalid_queue_names_are_refused(stub: Stub, queue: str) -> None:
    err = await rpc_error(enqueue(stub, "noop", queue=queue))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = error_details(err)
    assert reason == "INVALID_ARGUMENT" and set(fields) == {"queue"}


@pytest.mark.parametrize("kind", ["has space", "k/ind", "k" * 129, "kïnd"])
async def test_invalid_kind_names_are_refused(stub: Stub, kind: str) -> None:
    err = await rpc_error(enqueue(stub, kind))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, fields = error_details(err)
    assert "kind" in fields


async def test_run_at_in_the_future_keeps_the_job_scheduled(stub: Stub) -> None:
    when = timestamp_pb2.Timestamp()
    when.FromSeconds(int(time.time()) + 3600)
    reply = await enqueue(stub, "noop", b"future", run_at=when)
    assert reply.job.state == S.JOB_STATE_SCHEDULED and reply.job.run_at == when
    assert (await get(stub, reply.job.id)).state == S.JOB_STATE_SCHEDULED
    await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id), timeout=10)
    past = timestamp_pb2.Timestamp()
    past.FromSeconds(int(time.time()) - 3600)
    now_job = await enqueue(stub, "noop", b"past", run_at=past)
    assert now_job.job.state != S.JOB_STATE_SCHEDULED and now_job.job.run_at.seconds >= past.seconds + 3000
    assert (await watch(stub, now_job.job.id))[-1].type == T.EVENT_TYPE_SUCCEEDED
    err = await rpc_error(enqueue(stub, "noop", run_at=when, delay=FAR))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and {"run_at", "delay"} <= set(error_details(err)[1])


@pytest.mark.parametrize(("priority", "stored"), [(0, 5), (1, 1), (10, 10)])
async def test_priority_range(stub: Stub, priority: int, stored: int) -> None:
    reply = await enqueue(stub, "noop", delay=FAR, priority=priority)
    assert reply.job.priority == stored
    await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id), timeout=10)


@pytest.mark.parametrize("priority", [-1, 11])
async def test_priority_out_of_range_is_refused(stub: Stub, priority: int) -> None:
    err = await rpc_error(enqueue(stub, "noop", priority=priority))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and set(error_details(err)[1]) == {"priority"}


async def test_dedupe_key_folds_into_an_active_job_only(stub: Stub) -> None:
    key = unique("dk")
    first = await enqueue(stub, "noop", b"1", delay=FAR, dedupe_key=key)
    assert first.job.state == S.JOB_STATE_SCHEDULED and not first.deduplicated
    again = await enqueue(stub, "noop", b"2", delay=FAR, dedupe_key=key)
    assert again.deduplicated and again.job.id == first.job.id and again.job.payload == b"1"
    elsewhere = await enqueue(stub, "noop", b"3", delay=FAR, dedupe_key=key, queue=unique("other"))
    assert not elsewhere.deduplicated and elsewhere.job.id != first.job.id, "the key is per queue"
    await stub.CancelJob(pb.CancelJobRequest(id=first.job.id), timeout=10)
    after_cancel = await enqueue(stub, "noop", b"4", dedupe_key=key)
    assert not after_cancel.deduplicated and after_cancel.job.id != first.job.id, "a cancelled job is not active"
    assert (await watch(stub, after_cancel.job.id))[-1].type == T.EVENT_TYPE_SUCCEEDED
    after_success = await enqueue(stub, "noop", b"5", dedupe_key=key)
    assert not after_success.deduplicated and after_success.job.id != after_cancel.job.id, "nor a finished one"
    await stub.CancelJob(pb.CancelJobRequest(id=elsewhere.job.id), timeout=10)
    await watch(stub, after_success.job.id)


async def test_request_id_returns_the_same_job_and_refuses_a_different_request(stub: Stub) -> None:
    request_id = unique("req")
    first = await enqueue(stub, "noop", b"same", delay=FAR, request_id=request_id)
    again = await enqueue(stub, "noop", b"same", delay=FAR, request_id=request_id)
    assert again.job.id == first.job.id and not again.deduplicated
    assert again.job.last_sequence == first.job.last_sequence == 1
    err = await rpc_error(enqueue(stub, "noop", b"different", delay=FAR, request_id=request_id))
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_details(err)[0] == "REQUEST_ID_REUSED"
    listed = await stub.ListJobs(pb.ListJobsRequest(kind="noop", states=[S.JOB_STATE_SCHEDULED], page_size=1000))
    assert sum(j.id == first.job.id for j in listed.jobs) == 1
    assert all(j.payload != b"different" for j in listed.jobs), "the refused request created nothing"
    await stub.CancelJob(pb.CancelJobRequest(id=first.job.id), timeout=10)


async def test_malformed_payload_fails_without_retry(stub: Stub) -> None:
    reply = await enqueue(stub, "sleep", b"not json")
    assert reply.job.max_attempts > 1
    events = await watch(stub, reply.job.id)
    assert events[-1].type == T.EVENT_TYPE_FAILED
    assert T.EVENT_TYPE_RETRY_SCHEDULED not in [e.type for e in events]
    job = await get(stub, reply.job.id)
    assert job.state == S.JOB_STATE_FAILED and job.attempt == 1
    (error,) = job.error_history
    assert error.type == "MalformedPayload" and not error.retryable and error.phase == "step-1"


# ----------------------------------------------------------------------------- events


async def test_event_sequences_increase_and_watch_replays_from_after_sequence(stub: Stub) -> None:
    reply = await enqueue(stub, "sleep", json.dumps({"seconds": 0.05, "phases": 2}).encode())
    live = await stream(stub, reply.job.id, after=0)
    assert live[0].type == T.EVENT_TYPE_SNAPSHOT and live[-1].type == T.EVENT_TYPE_SUCCEEDED
    sequences = [e.sequence for e in live]
    assert all(a < b for a, b in itertools.pairwise(sequences)), sequences
    job = await get(stub, reply.job.id)
    last = job.last_sequence
    assert sequences[-1] == last
    replay = await watch(stub, reply.job.id, after=1)
    assert [e.sequence for e in replay] == list(range(2, last + 1)), "every stored event after ENQUEUED"
    types = [e.type for e in replay]
    assert types[0] == T.EVENT_TYPE_STARTED and types[-1] == T.EVENT_TYPE_SUCCEEDED
    assert types.count(T.EVENT_TYPE_PHASE_STARTED) == 2 and T.EVENT_TYPE_PROGRESS in types
    newer = {e.sequence: e.type for e in replay if e.sequence > live[0].sequence}
    assert {e.sequence: e.type for e in live[1:]} == newer, "live events and stored events agree"
    middle = last // 2
    assert [e.sequence for e in await stream(stub, reply.job.id, after=middle)] == list(range(middle + 1, last + 1))
    assert await stream(stub, reply.job.id, after=last) == []
    snapshot_only = await stream(stub, reply.job.id, after=0)
    assert [(e.type, e.sequence) for e in snapshot_only] == [(T.EVENT_TYPE_SNAPSHOT, last)]
    err = await rpc_error(stream(stub, reply.job.id, after=last + 1))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_one_slow_job_never_blocks_the_others(stub: Stub, gate: Gate) -> None:
    slow = await enqueue(stub, "tk.gate", gate.payload())
    held = await gate.next()
    assert held.job == slow.job.id
    quick = [await enqueue(stub, "noop", str(i).encode()) for i in range(12)]
    for reply in quick:
        assert (await watch(stub, reply.job.id))[-1].type == T.EVENT_TYPE_SUCCEEDED
    assert (await get(stub, slow.job.id)).state == S.JOB_STATE_RUNNING
    held.release()
    assert (await watch(stub, slow.job.id))[-1].type == T.EVENT_TYPE_SUCCEEDED


# ----------------------------------------------------------------------------- cancel


async def test_cancel_running_job_requests_then_cancels_when_the_handler_stops(stub: Stub, gate: Gate) -> None:
    reply = await enqueue(stub, "tk.two", gate.payload())
    call = await gate.next()
    assert call.phase == "one"
    asked = await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id, reason="enough"), timeout=10)
    assert asked.state == S.JOB_STATE_RUNNING and asked.cancel_requested and asked.cancel_reason == "enough"
    await call.closed()  # the handler was cancelled: it hung up without being released
    events = await watch(stub, reply.job.id)
    types = [e.type for e in events]
    assert types[-1] == T.EVENT_TYPE_CANCELLED and types.count(T.EVENT_TYPE_CANCELLED) == 1
    assert types.index(T.EVENT_TYPE_CANCEL_REQUESTED) < types.index(T.EVENT_TYPE_CANCELLED)
    job = await get(stub, reply.job.id)
    assert job.state == S.JOB_STATE_CANCELLED and [p.state for p in job.phases] == [P.PHASE_STATE_CANCELLED] * 2
    assert [c.phase for c in gate.calls] == ["one"], "phase two never ran"


async def test_handler_ignoring_cancel_is_abandoned_after_the_grace(stub: Stub, gate: Gate) -> None:
    reply = await enqueue(stub, "tk.stubborn", gate.payload())
    call = await gate.next()
    await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id), timeout=10)
    assert await call.line() == "cancel-ignored"
    events = await watch(stub, reply.job.id)
    assert events[-1].type == T.EVENT_TYPE_CANCELLED
    cancelled = await get(stub, reply.job.id)
    assert cancelled.state == S.JOB_STATE_CANCELLED
    call.release()  # the abandoned handler now returns a result…
    await call.closed()
    after = await get(stub, reply.job.id)
    assert after == cancelled, "…which is refused: nothing about the job changes"
    assert after.phases[0].result == b"" and after.phases[0].state == P.PHASE_STATE_CANCELLED


async def test_cancel_of_a_cancelled_job_returns_it_without_a_new_event(stub: Stub) -> None:
    reply = await enqueue(stub, "noop", delay=FAR)
    first = await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id, reason="one"), timeout=10)
    assert first.state == S.JOB_STATE_CANCELLED and first.last_sequence == 2
    second = await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id, reason="two"), timeout=10)
    assert second == first


async def test_cancel_of_a_finished_job_is_failed_precondition(stub: Stub) -> None:
    succeeded = await enqueue(stub, "noop", b"x")
    failed = await enqueue(stub, "sleep", b"not json")
    for reply in (succeeded, failed):
        final = (await watch(stub, reply.job.id))[-1]
        err = await rpc_error(stub.CancelJob(pb.CancelJobRequest(id=reply.job.id), timeout=10))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(err)[0] == "INVALID_TRANSITION"
        assert (await get(stub, reply.job.id)).last_sequence == final.sequence


# ----------------------------------------------------------------------------- retry


async def test_partial_retry_resumes_at_the_first_unfinished_phase(stub: Stub, gate: Gate) -> None:
    reply = await enqueue(stub, "tk.three", gate.payload())
    job_id = reply.job.id
    (await gate.next()).release()  # a
    b = await gate.next()
    assert (b.phase, b.results) == ("b", ["a"])
    b.release(FAIL_PERMANENTLY)
    assert (await watch(stub, job_id))[-1].type == T.EVENT_TYPE_FAILED
    failed = await get(stub, job_id)
    assert [p.state for p in failed.phases] == [P.PHASE_STATE_SUCCEEDED, P.PHASE_STATE_FAILED, P.PHASE_STATE_PENDING]
    kept = failed.phases[0].result
    assert json.loads(kept) == {"phase": "a", "attempt": 1, "results": []}

    retried = await stub.RetryJob(pb.RetryJobRequest(id=job_id, from_start=False), timeout=10)
    assert retried.state == S.JOB_STATE_QUEUED
    assert [p.state for p in retried.phases] == [P.PHASE_STATE_SUCCEEDED, P.PHASE_STATE_PENDING, P.PHASE_STATE_PENDING]
    assert retried.phases[0].result == kept and not retried.HasField("error")
    b_again = await gate.next()
    assert (b_again.phase, b_again.attempt, b_again.results) == ("b", 2, ["a"])
    b_again.release()
    c = await gate.next()
    assert (c.phase, c.results) == ("c", ["a", "b"])
    c.release()
    assert (await watch(stub, job_id))[-1].type == T.EVENT_TYPE_SUCCEEDED
    done = await get(stub, job_id)
    assert done.phases[0].result == kept, "phase a's result survived the retry"
    assert [call.phase for call in gate.calls] == ["a", "b", "b", "c"], "phase a ran once"
    assert json.loads(done.result) == {"phase": "c", "attempt": 2, "results": ["a", "b"]}

    err = await rpc_error(stub.RetryJob(pb.RetryJobRequest(id=job_id, from_start=False), timeout=10))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, "a SUCCEEDED job is retried only from the start"
    again = await stub.RetryJob(pb.RetryJobRequest(id=job_id, from_start=True), timeout=10)
    assert again.state == S.JOB_STATE_QUEUED
    assert [(p.state, p.result) for p in again.phases] == [(P.PHASE_STATE_PENDING, b"")] * 3
    for name in ("a", "b", "c"):
        call = await gate.next()
        assert call.phase == name and call.attempt == 3
        call.release()
    assert (await watch(stub, job_id))[-1].type == T.EVENT_TYPE_SUCCEEDED
    assert [call.phase for call in gate.calls].count("a") == 2


async def test_retry_of_a_cancelled_job_runs_it(stub: Stub) -> None:
    reply = await enqueue(stub, "noop", b"again", delay=FAR)
    await stub.CancelJob(pb.CancelJobRequest(id=reply.job.id), timeout=10)
    retried = await stub.RetryJob(pb.RetryJobRequest(id=reply.job.id), timeout=10)
    assert retried.state == S.JOB_STATE_QUEUED and not retried.cancel_requested
    assert (await watch(stub, reply.job.id, after=retried.last_sequence))[-1].type == T.EVENT_TYPE_SUCCEEDED
    assert (await get(stub, reply.job.id)).result == b"again"


async def test_retry_of_an_active_job_is_failed_precondition(stub: Stub, gate: Gate) -> None:
    scheduled = await enqueue(stub, "noop", delay=FAR)
    running = await enqueue(stub, "tk.gate", gate.payload())
    call = await gate.next()
    for reply in (scheduled, running):
        for from_start in (False, True):
            err = await rpc_error(stub.RetryJob(pb.RetryJobRequest(id=reply.job.id, from_start=from_start),
                                                timeout=10))
            assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    call.release()
    assert (await watch(stub, running.job.id))[-1].type == T.EVENT_TYPE_SUCCEEDED
    await stub.CancelJob(pb.CancelJobRequest(id=scheduled.job.id), timeout=10)


async def test_retry_when_another_job_took_the_dedupe_key_is_a_clean_refusal(stub: Stub) -> None:
    key = unique("dk")
    old = await enqueue(stub, "noop", b"old", delay=FAR, dedupe_key=key)
    await stub.CancelJob(pb.CancelJobRequest(id=old.job.id), timeout=10)
    new = await enqueue(stub, "noop", b"new", delay=FAR, dedupe_key=key)
    assert not new.deduplicated
    # Two active jobs may not share a dedupe_key; the retry must be refused with a clear status,
    # not fail inside the store.
    err = await rpc_error(stub.RetryJob(pb.RetryJobRequest(id=old.job.id), timeout=10))
    await stub.CancelJob(pb.CancelJobRequest(id=new.job.id), timeout=10)
    assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS), (
        f"{err.code()}: {err.details()}")
    assert (await get(stub, old.job.id)).state == S.JOB_STATE_CANCELLED


async def test_the_server_keeps_serving(stub: Stub) -> None:
    """Runs last in this module: none of the above broke the shared server."""
    reply = await enqueue(stub, "noop", b"still here")
    assert (await until_event(stub, reply.job.id, T.EVENT_TYPE_SUCCEEDED)).job.result == b"still here"
