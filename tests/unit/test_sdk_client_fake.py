"""The SDK and CLI against a scripted in-process JobService (no real server needed).

The fake answers with exactly the statuses, trailers and stream endings a test scripts, so the
client's own behaviour is pinned: retry of UNAVAILABLE only (bounded, one request_id), bearer
metadata, watch resume after UNAVAILABLE / WATCH_TOO_SLOW, result() outcomes, paging, the sync
facade and the CLI's output and exit codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jobwire
import jobwire.sync
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from jobwire import EventType, JobState, RetryPolicy, cli
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc as pb_grpc

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01)
TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


# --- the fake service ----------------------------------------------------------------------------


def _trailers(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code.value[0], message=message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="jobwire", metadata=metadata or {}))
    status.details.append(info)
    if violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
                ]
            )
        )
        status.details.append(bad)
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def _abort(
    context: aio.ServicerContext[object, object],
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> None:
    await context.abort(code, message, trailing_metadata=_trailers(code, message, reason, metadata, violations))


def _job(job_id: str, state: int = pb.JOB_STATE_QUEUED, **fields: object) -> pb.Job:
    defaults: dict[str, object] = {"kind": "sleep", "queue": "default", "max_attempts": 3}
    return pb.Job(id=job_id, state=state, **{**defaults, **fields})  # type: ignore[arg-type]


def _phases(*states: int, percent: float = 100.0) -> list[pb.Phase]:
    return [
        pb.Phase(name=f"phase-{i + 1}", state=s, progress=pb.Progress(percent=percent, message=f"step {i + 1}"))
        for i, s in enumerate(states)
    ]


def _event(job_id: str, seq: int, etype: int, state: int, **job_fields: object) -> pb.JobEvent:
    return pb.JobEvent(job_id=job_id, sequence=seq, type=etype, job=_job(job_id, state, **job_fields))


@dataclass
class WatchScript:
    """One WatchJob call: send ``events``, then end OK, fail with ``error``, or hang until cancelled."""

    events: list[pb.JobEvent]
    error: tuple[grpc.StatusCode, str, dict[str, str]] | None = None
    hang: bool = False


@dataclass
class Call:
    method: str
    request: Message
    metadata: dict[str, str]


@dataclass
class FakeService(pb_grpc.JobServiceServicer):
    jobs: dict[str, pb.Job] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    unavailable: dict[str, int] = field(default_factory=dict)
    watch_scripts: list[WatchScript] = field(default_factory=list)
    live_events: list[pb.JobEvent] = field(default_factory=list)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def _enter(self, method: str, request: Message, context: aio.ServicerContext[object, object]) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.calls.append(Call(method, request, metadata))
        if self.unavailable.get(method, 0) > 0:
            self.unavailable[method] -= 1
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "shutting down", "SHUTTING_DOWN")

    async def _known(self, job_id: str, context: aio.ServicerContext[object, object]) -> pb.Job:
        if job_id not in self.jobs:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"job {job_id} not found", "JOB_NOT_FOUND")
        return self.jobs[job_id]

    def _create(self, request: pb.EnqueueRequest) -> pb.EnqueueResponse:
        job = _job(f"job-{len(self.jobs) + 1}", kind=request.kind, payload=request.payload)
        self.jobs[job.id] = job
        return pb.EnqueueResponse(job=job, deduplicated=request.dedupe_key == "dup")

    async def Enqueue(
        self, request: pb.EnqueueRequest, context: aio.ServicerContext[object, object]
    ) -> pb.EnqueueResponse:
        await self._enter("Enqueue", request, context)
        if request.kind == "bad-kind":
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "no handler for kind",
                "UNKNOWN_KIND",
                violations=[("kind", "no handler is registered for 'bad-kind'")],
            )
        return self._create(request)

    async def EnqueueBatch(
        self, request: pb.EnqueueBatchRequest, context: aio.ServicerContext[object, object]
    ) -> pb.EnqueueBatchResponse:
        await self._enter("EnqueueBatch", request, context)
        return pb.EnqueueBatchResponse(responses=[self._create(r) for r in request.requests])

    async def GetJob(self, request: pb.GetJobRequest, context: aio.ServicerContext[object, object]) -> pb.Job:
        await self._enter("GetJob", request, context)
        return await self._known(request.id, context)

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ListJobsResponse:
        await self._enter("ListJobs", request, context)
        jobs = sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)
        start = int(request.page_token or 0)
        end = start + (request.page_size or 50)
        return pb.ListJobsResponse(jobs=jobs[start:end], next_page_token=str(end) if end < len(jobs) else "")

    async def CancelJob(self, request: pb.CancelJobRequest, context: aio.ServicerContext[object, object]) -> pb.Job:
        await self._enter("CancelJob", request, context)
        job = await self._known(request.id, context)
        if job.state in TERMINAL - {pb.JOB_STATE_CANCELLED}:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "job is finished", "INVALID_TRANSITION")
        job.state, job.cancel_reason = pb.JOB_STATE_CANCELLED, request.reason
        return job

    async def RetryJob(self, request: pb.RetryJobRequest, context: aio.ServicerContext[object, object]) -> pb.Job:
        await self._enter("RetryJob", request, context)
        job = await self._known(request.id, context)
        job.state = pb.JOB_STATE_QUEUED
        return job

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.JobEvent]:
        await self._enter("WatchJob", request, context)
        await self._known(request.id, context)
        script = self.watch_scripts.pop(0)
        for event in script.events:
            yield event
        if script.error is not None:
            code, reason, metadata = script.error
            await _abort(context, code, f"stream dropped: {reason}", reason, metadata)
        if script.hang:
            await asyncio.Future()

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.JobEvent]:
        await self._enter("WatchEvents", request, context)
        for event in self.live_events:
            yield event
        await asyncio.Future()

    async def GetQueueStats(
        self, request: pb.GetQueueStatsRequest, context: aio.ServicerContext[object, object]
    ) -> pb.GetQueueStatsResponse:
        await self._enter("GetQueueStats", request, context)
        return pb.GetQueueStatsResponse(queues=[pb.QueueStats(queue="default", queued=2, failed=1)])


class FakeServer:
    """Serves a FakeService on loopback from its own thread and event loop."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.service = FakeService()
        self._credentials = credentials
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: aio.Server | None = None
        self.target = ""

    async def _start(self) -> str:
        self._server = aio.server()
        pb_grpc.add_JobServiceServicer_to_server(self.service, self._server)
        if self._credentials is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            port = self._server.add_secure_port("127.0.0.1:0", self._credentials)
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        assert self._server is not None
        await self._server.stop(None)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        self.target = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def _add_job(fake: FakeServer, job_id: str, state: int = pb.JOB_STATE_QUEUED, **fields: object) -> pb.Job:
    job = _job(job_id, state, **fields)
    fake.service.jobs[job_id] = job
    return job


def _run_to(fake: FakeServer, job_id: str, final: int, **final_fields: object) -> None:
    """Script one WatchJob stream: snapshot, a progress event, then the terminal event."""
    running = _phases(pb.PHASE_STATE_SUCCEEDED, pb.PHASE_STATE_RUNNING, percent=50)
    fake.service.watch_scripts.append(
        WatchScript(
            events=[
                _event(job_id, 3, pb.EVENT_TYPE_SNAPSHOT, pb.JOB_STATE_RUNNING, phases=running),
                _event(job_id, 4, pb.EVENT_TYPE_PROGRESS, pb.JOB_STATE_RUNNING, phases=running),
                _event(
                    job_id,
                    5,
                    {
                        pb.JOB_STATE_SUCCEEDED: pb.EVENT_TYPE_SUCCEEDED,
                        pb.JOB_STATE_FAILED: pb.EVENT_TYPE_FAILED,
                        pb.JOB_STATE_CANCELLED: pb.EVENT_TYPE_CANCELLED,
                    }[final],
                    final,
                    **final_fields,
                ),
            ]
        )
    )


# --- async client ----------------------------------------------------------------------------------


async def test_enqueue_retries_unavailable_with_one_request_id_and_sends_the_token(fake: FakeServer) -> None:
    fake.service.unavailable["Enqueue"] = 2
    async with jobwire.Client(fake.target, token="s3cret", retry=FAST) as client:
        handle = await client.enqueue("sleep", payload={"seconds": 0.2}, labels={"a": "b"})
    calls = fake.service.calls_of("Enqueue")
    assert len(calls) == 3
    request_ids = {c.request.request_id for c in calls}  # type: ignore[attr-defined]
    assert len(request_ids) == 1 and "" not in request_ids
    assert all(c.metadata["authorization"] == "Bearer s3cret" for c in calls)
    assert handle.id == "job-1" and not handle.deduplicated
    assert handle.job is not None and handle.job.state is JobState.QUEUED
    assert json.loads(handle.job.payload) == {"seconds": 0.2}


async def test_unavailable_retries_are_bounded(fake: FakeServer) -> None:
    fake.service.unavailable["GetJob"] = 100
    async with jobwire.Client(fake.target, retry=FAST) as client:
        with pytest.raises(jobwire.Unavailable) as info:
            await client.get_job("job-1")
    assert info.value.reason == "SHUTTING_DOWN"
    assert len(fake.service.calls_of("GetJob")) == FAST.max_attempts


async def test_other_errors_are_not_retried_and_are_typed(fake: FakeServer) -> None:
    async with jobwire.Client(fake.target, retry=FAST) as client:
        with pytest.raises(jobwire.InvalidArgument) as bad:
            await client.enqueue("bad-kind")
        with pytest.raises(jobwire.JobNotFound) as missing:
            await client.get_job("nope")
    assert bad.value.reason == "UNKNOWN_KIND"
    assert [f for f, _ in bad.value.violations] == ["kind"]
    assert missing.value.reason == "JOB_NOT_FOUND"
    assert len(fake.service.calls_of("Enqueue")) == 1
    assert len(fake.service.calls_of("GetJob")) == 1


async def test_no_token_sends_no_authorization(fake: FakeServer) -> None:
    async with jobwire.Client(fake.target) as client:
        await client.enqueue("noop")
    assert "authorization" not in fake.service.calls_of("Enqueue")[0].metadata


async def test_cancel_and_retry_through_the_handle(fake: FakeServer) -> None:
    _add_job(fake, "j1")
    _add_job(fake, "done", pb.JOB_STATE_SUCCEEDED)
    async with jobwire.Client(fake.target) as client:
        job = await client.handle("j1").cancel(reason="no longer needed")
        assert job.state is JobState.CANCELLED and job.cancel_reason == "no longer needed"
        assert (await client.handle("j1").retry(from_start=True)).state is JobState.QUEUED
        with pytest.raises(jobwire.InvalidTransition):
            await client.handle("done").cancel()
    retry_call = fake.service.calls_of("RetryJob")[0]
    assert retry_call.request.from_start  # type: ignore[attr-defined]


async def test_watch_resumes_after_unavailable_and_slow_reader(fake: FakeServer) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING)
    fake.service.watch_scripts += [
        WatchScript(
            events=[
                _event("j1", 5, pb.EVENT_TYPE_SNAPSHOT, pb.JOB_STATE_RUNNING),
                _event("j1", 6, pb.EVENT_TYPE_PROGRESS, pb.JOB_STATE_RUNNING),
            ],
            error=(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", {}),
        ),
        WatchScript(
            events=[_event("j1", 7, pb.EVENT_TYPE_PROGRESS, pb.JOB_STATE_RUNNING)],
            error=(grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_TOO_SLOW", {"last_sequence": "7"}),
        ),
        WatchScript(events=[_event("j1", 8, pb.EVENT_TYPE_SUCCEEDED, pb.JOB_STATE_SUCCEEDED)]),
    ]
    async with jobwire.Client(fake.target, retry=FAST) as client:
        events = [e async for e in client.handle("j1").watch()]
    assert [e.sequence for e in events] == [5, 6, 7, 8]
    assert events[-1].type is EventType.SUCCEEDED
    afters = [c.request.after_sequence for c in fake.service.calls_of("WatchJob")]  # type: ignore[attr-defined]
    assert afters == [0, 6, 7]


async def test_watch_refused_for_too_many_streams_is_tried_again(fake: FakeServer) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING)
    refused = WatchScript(events=[], error=(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", {}))
    fake.service.watch_scripts += [
        refused, refused,
        WatchScript(events=[_event("j1", 3, pb.EVENT_TYPE_SNAPSHOT, pb.JOB_STATE_RUNNING),
                            _event("j1", 4, pb.EVENT_TYPE_SUCCEEDED, pb.JOB_STATE_SUCCEEDED)]),
    ]
    async with jobwire.Client(fake.target, retry=FAST) as client:
        events = [e async for e in client.handle("j1").watch()]
    assert [e.sequence for e in events] == [3, 4]
    assert [c.request.after_sequence for c in fake.service.calls_of("WatchJob")] == [0, 0, 0]  # type: ignore[attr-defined]


async def test_watch_refused_too_often_raises(fake: FakeServer) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING)
    refused = WatchScript(events=[], error=(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", {}))
    fake.service.watch_scripts += [refused] * FAST.max_attempts
    async with jobwire.Client(fake.target, retry=FAST) as client:
        with pytest.raises(jobwire.ResourceExhausted) as caught:
            _ = [e async for e in client.handle("j1").watch()]
    assert caught.value.reason == "TOO_MANY_STREAMS"
    assert len(fake.service.calls_of("WatchJob")) == FAST.max_attempts


async def test_watch_does_not_resume_other_errors(fake: FakeServer) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING)
    fake.service.watch_scripts.append(
        WatchScript(
            events=[_event("j1", 1, pb.EVENT_TYPE_SNAPSHOT, pb.JOB_STATE_RUNNING)],
            error=(grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE", {}),
        )
    )
    seen = []
    async with jobwire.Client(fake.target, retry=FAST) as client:
        with pytest.raises(jobwire.ResourceExhausted):
            async for event in client.handle("j1").watch():
                seen.append(event.sequence)
    assert seen == [1]
    assert len(fake.service.calls_of("WatchJob")) == 1


async def test_watch_unknown_job_raises_not_found(fake: FakeServer) -> None:
    async with jobwire.Client(fake.target) as client:
        with pytest.raises(jobwire.JobNotFound):
            async for _ in client.handle("missing").watch():
                pass


async def test_result_outcomes(fake: FakeServer) -> None:
    for job_id in ("ok", "bad", "stop"):
        _add_job(fake, job_id, pb.JOB_STATE_RUNNING)
    _run_to(fake, "ok", pb.JOB_STATE_SUCCEEDED, result=b'{"done":true}')
    _run_to(fake, "bad", pb.JOB_STATE_FAILED, error=pb.JobError(message="boom", type="ValueError"))
    _run_to(fake, "stop", pb.JOB_STATE_CANCELLED, cancel_reason="user")
    async with jobwire.Client(fake.target) as client:
        assert await client.handle("ok").result(timeout=10) == b'{"done":true}'
        with pytest.raises(jobwire.JobFailed) as failed:
            await client.handle("bad").result(timeout=10)
        with pytest.raises(jobwire.JobCancelled) as cancelled:
            await client.handle("stop").result(timeout=10)
    assert failed.value.error is not None and failed.value.error.message == "boom"
    assert failed.value.job.state is JobState.FAILED
    assert cancelled.value.job.cancel_reason == "user"


async def test_result_times_out(fake: FakeServer) -> None:
    _add_job(fake, "slow", pb.JOB_STATE_RUNNING)
    fake.service.watch_scripts.append(
        WatchScript(events=[_event("slow", 1, pb.EVENT_TYPE_SNAPSHOT, pb.JOB_STATE_RUNNING)], hang=True)
    )
    async with jobwire.Client(fake.target) as client:
        with pytest.raises(TimeoutError):
            await client.handle("slow").result(timeout=0.3)


async def test_list_jobs_walks_every_page(fake: FakeServer) -> None:
    for i in range(5):
        _add_job(fake, f"j{i}")
    async with jobwire.Client(fake.target) as client:
        ids = [j.id async for j in client.list_jobs(page_size=2, states=[JobState.QUEUED])]
        first, token = await client.list_jobs_page(page_size=2)
    assert ids == ["j4", "j3", "j2", "j1", "j0"]
    tokens = [c.request.page_token for c in fake.service.calls_of("ListJobs")]  # type: ignore[attr-defined]
    assert tokens[:3] == ["", "2", "4"]
    assert [j.id for j in first] == ["j4", "j3"] and token == "2"


async def test_enqueue_many_keeps_order_and_gives_each_a_request_id(fake: FakeServer) -> None:
    specs = [jobwire.EnqueueSpec(kind="noop", payload={"i": i}) for i in range(3)]
    async with jobwire.Client(fake.target) as client:
        handles = await client.enqueue_many(specs)
    assert [h.id for h in handles] == ["job-1", "job-2", "job-3"]
    (call,) = fake.service.calls_of("EnqueueBatch")
    ids = [r.request_id for r in call.request.requests]  # type: ignore[attr-defined]
    assert len(set(ids)) == 3 and "" not in ids


async def test_watch_events_and_queue_stats(fake: FakeServer) -> None:
    fake.service.live_events = [
        _event("a", 1, pb.EVENT_TYPE_ENQUEUED, pb.JOB_STATE_QUEUED),
        _event("b", 1, pb.EVENT_TYPE_ENQUEUED, pb.JOB_STATE_QUEUED),
    ]
    async with jobwire.Client(fake.target) as client:
        seen = []
        async for event in client.watch_events(queues=["default"], types=[EventType.ENQUEUED]):
            seen.append(event.job_id)
            if len(seen) == 2:
                break
        stats = await client.queue_stats()
    assert seen == ["a", "b"]
    request = fake.service.calls_of("WatchEvents")[0].request
    assert list(request.types) == [pb.EVENT_TYPE_ENQUEUED]  # type: ignore[attr-defined]
    assert stats[0].queue == "default" and stats[0].queued == 2


# --- sync facade -----------------------------------------------------------------------------------


def test_sync_facade(fake: FakeServer) -> None:
    with jobwire.sync.Client(fake.target, retry=FAST) as client:
        handle = client.enqueue("noop", payload={"x": 1})
        _run_to(fake, handle.id, pb.JOB_STATE_SUCCEEDED, result=b'{"x":1}')
        _run_to(fake, handle.id, pb.JOB_STATE_SUCCEEDED, result=b'{"x":1}')
        types = [e.type for e in handle.watch()]
        assert types == [EventType.SNAPSHOT, EventType.PROGRESS, EventType.SUCCEEDED]
        assert handle.result(timeout=10) == b'{"x":1}'
        assert [j.id for j in client.list_jobs(page_size=1)] == [handle.id]
        with pytest.raises(jobwire.JobNotFound):
            client.get_job("missing")
        assert client.queue_stats()[0].failed == 1


def test_sync_iterator_can_be_closed_early(fake: FakeServer) -> None:
    fake.service.live_events = [_event("a", 1, pb.EVENT_TYPE_ENQUEUED, pb.JOB_STATE_QUEUED)]
    with jobwire.sync.Client(fake.target) as client:
        events = client.watch_events()
        assert next(events).job_id == "a"
        events.close()
        assert client.queue_stats()[0].queue == "default"  # the client still works


def test_sync_client_close_is_idempotent(fake: FakeServer) -> None:
    client = jobwire.sync.Client(fake.target)
    client.close()
    client.close()
    with pytest.raises(RuntimeError):
        client.get_job("x")


def _interrupt_next_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next blocking wait of the sync facade raise KeyboardInterrupt, as Ctrl-C would."""
    original = concurrent.futures.Future.result
    calls = 0

    def result(self: concurrent.futures.Future[object], timeout: float | None = None) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyboardInterrupt
        return original(self, timeout)

    monkeypatch.setattr(concurrent.futures.Future, "result", result)


def test_sync_interrupt_cancels_the_coroutine(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = jobwire.sync._LoopThread()

    async def forever() -> None:
        await asyncio.Future()

    _interrupt_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runner.run(forever())
    monkeypatch.undo()
    assert runner.run(asyncio.sleep(0, "still usable")) == "still usable"  # sleep-ok: a no-op coroutine
    runner.close()


def test_sync_interrupt_during_iteration_closes_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = jobwire.sync._LoopThread()
    closed = threading.Event()

    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.Future()
            yield 2
        finally:
            closed.set()

    items = runner.iterate(stream())
    assert next(items) == 1
    _interrupt_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        next(items)
    monkeypatch.undo()
    assert closed.wait(5)
    runner.close()


# --- CLI -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("final", "code", "word"),
    [
        (pb.JOB_STATE_SUCCEEDED, 0, "SUCCEEDED"),
        (pb.JOB_STATE_FAILED, 1, "FAILED"),
        (pb.JOB_STATE_CANCELLED, 2, "CANCELLED"),
    ],
)
def test_cli_watch_exit_codes(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], final: int, code: int, word: str
) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING)
    _run_to(fake, "j1", final, error=pb.JobError(message="boom", type="ValueError"))
    assert cli.main(["watch", "j1", "--target", fake.target]) == code
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4  # one line per event (stdout is not a TTY), then the final state
    assert "PROGRESS" in out[1]
    assert out[-1].startswith(f"job j1 {word}")


def test_cli_watch_json_lines(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING)
    _run_to(fake, "j1", pb.JOB_STATE_SUCCEEDED)
    assert cli.main(["watch", "j1", "--json", "--target", fake.target]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in lines] == ["SNAPSHOT", "PROGRESS", "SUCCEEDED"]
    assert lines[-1]["job"]["state"] == "SUCCEEDED"


def test_cli_enqueue_get_list_stats_json(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBWIRE_TARGET", fake.target)
    monkeypatch.setenv("JOBWIRE_TOKEN", "tok")
    assert cli.main(["enqueue", "sleep", "--payload", '{"seconds": 0.2}', "--label", "a=b", "--json"]) == 0
    enqueued = json.loads(capsys.readouterr().out)
    assert enqueued["deduplicated"] is False
    assert json.loads(enqueued["job"]["payload"]) == {"seconds": 0.2}
    job_id = enqueued["job"]["id"]
    call = fake.service.calls_of("Enqueue")[0]
    assert call.metadata["authorization"] == "Bearer tok"
    assert dict(call.request.labels) == {"a": "b"}  # type: ignore[attr-defined]

    assert cli.main(["get", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job_id
    _add_job(fake, "zz")
    assert cli.main(["list", "--json", "--limit", "1"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [j["id"] for j in listed] == ["zz"]
    assert cli.main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queued"] == 2


def test_cli_human_output(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    _add_job(fake, "j1", pb.JOB_STATE_RUNNING, phases=_phases(pb.PHASE_STATE_SUCCEEDED, pb.PHASE_STATE_RUNNING))
    assert cli.main(["get", "j1", "--target", fake.target]) == 0
    text = capsys.readouterr().out
    assert "state:      RUNNING" in text and "phase-2" in text
    assert cli.main(["list", "--target", fake.target]) == 0
    assert "j1" in capsys.readouterr().out
    assert cli.main(["cancel", "j1", "--reason", "r", "--target", fake.target]) == 0
    assert "cancelled j1" in capsys.readouterr().out
    assert cli.main(["retry", "j1", "--target", fake.target]) == 0
    assert "retrying j1" in capsys.readouterr().out


def test_cli_errors_print_one_line(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "missing", "--target", fake.target]) == 1
    captured = capsys.readouterr()
    assert captured.err == "error: job missing not found (NOT_FOUND)\n"
    assert cli.main(["watch", "missing", "--target", fake.target]) == 3
    assert capsys.readouterr().err.startswith("error: ")
    assert cli.main(["enqueue", "sleep", "--payload", "{not json", "--target", fake.target]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_payload_from_file(fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(b"\x00raw")
    assert cli.main(["enqueue", "noop", "--payload", f"@{path}", "--target", fake.target]) == 0
    assert fake.service.calls_of("Enqueue")[0].request.payload == b"\x00raw"  # type: ignore[attr-defined]
    assert capsys.readouterr().out.startswith("enqueued job-1")


def test_watch_view_redraws_in_place_on_a_tty() -> None:
    out = io.StringIO()
    view = cli.WatchView(out, tty=True)
    job = jobwire.Job(
        id="j",
        kind="sleep",
        state=JobState.RUNNING,
        attempt=1,
        max_attempts=3,
        phases=(
            jobwire.Phase(name="a", state=jobwire.PhaseState.RUNNING, progress=jobwire.Progress(40, "copying")),
            jobwire.Phase(name="b"),
        ),
    )
    event = jobwire.JobEvent(job_id="j", sequence=1, type=EventType.PROGRESS, job=job)
    view.update(event)
    view.update(event)
    text = out.getvalue()
    assert text.count("\x1b[3F\x1b[J") == 1  # the second frame replaces the three lines of the first
    assert " 40.0%" in text and "copying" in text


# --- TLS -------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA with a server certificate (for 127.0.0.1 and localhost) and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates: install it (Debian: apt-get install openssl)")
    root = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        cwd=root,
    )
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=root)
        (root / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=root,
        )
    return root


def _server_credentials(pki: Path, require_client_auth: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes() if require_client_auth else None,
        require_client_auth=require_client_auth,
    )


async def test_tls_verifies_the_server_with_the_given_ca(pki: Path) -> None:
    with FakeServer(_server_credentials(pki, require_client_auth=False)) as server:
        async with jobwire.Client(server.target, tls=jobwire.TLSConfig(ca=pki / "ca.pem"), token="t") as client:
            assert (await client.queue_stats())[0].queue == "default"
        assert server.service.calls_of("GetQueueStats")[0].metadata["authorization"] == "Bearer t"
        async with jobwire.Client(server.target, retry=RetryPolicy(max_attempts=1)) as plaintext:
            with pytest.raises(jobwire.Unavailable):
                await plaintext.queue_stats()


async def test_mutual_tls_needs_the_client_certificate(pki: Path) -> None:
    with FakeServer(_server_credentials(pki, require_client_auth=True)) as server:
        tls = jobwire.TLSConfig(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        async with jobwire.Client(server.target, tls=tls) as client:
            assert (await client.queue_stats())[0].queue == "default"
        no_cert = jobwire.TLSConfig(ca=pki / "ca.pem")
        async with jobwire.Client(server.target, tls=no_cert, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(jobwire.Unavailable):
                await client.queue_stats()


def test_cli_tls_flags(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(_server_credentials(pki, require_client_auth=True)) as server:
        flags = [
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-cert",
            str(pki / "client.pem"),
            "--tls-key",
            str(pki / "client.key"),
        ]
        assert cli.main(["stats", "--json", "--target", server.target, *flags]) == 0
    assert json.loads(capsys.readouterr().out)["queue"] == "default"


def test_tls_config_needs_cert_and_key_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both cert and key"):
        jobwire.TLSConfig(cert=tmp_path / "c.pem").credentials()


def test_retry_policy_backoff_is_bounded() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    for retry in range(20):
        assert 0.05 * min(2**retry, 10) <= policy.backoff(retry) <= min(1.0, 0.1 * 2**retry)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
