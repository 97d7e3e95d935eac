"""The engine in process with a FakeClock: delays, retries with backoff, retry_after, permanent
failures, malformed payloads and phase timeouts. Time moves only when a test advances the clock;
`claim_round` wakes the dispatcher as its timer would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jobwire_server.domain.clock import FakeClock
from jobwire_server.domain.errors import InvalidTransition
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.domain.states import EventType, JobState, PhaseState
from jobwire_server.handlers import JobContext, Kind, PermanentError, RetryableError

from tests.testkit import Harness, Recorder, claim_round, enqueue

#: A hang fails the test instead of blocking the run.
pytestmark = pytest.mark.timeout(60)

E = EventType

calls: dict[str, list[int]] = {}

echo = Kind("t.echo")


@echo.phase("run")
async def echo_run(ctx: JobContext) -> bytes:
    calls.setdefault(ctx.job_id, []).append(ctx.attempt)
    return ctx.payload


flaky = Kind("t.flaky", max_attempts=3, retry=RetryPolicy(base_delay=10.0, max_delay=1000.0))


@flaky.phase("work")
async def flaky_work(ctx: JobContext) -> bytes:
    calls.setdefault(ctx.job_id, []).append(ctx.attempt)
    raise RuntimeError(f"attempt {ctx.attempt} broke")


later = Kind("t.later", max_attempts=5)


@later.phase("work")
async def later_work(ctx: JobContext) -> bytes:
    calls.setdefault(ctx.job_id, []).append(ctx.attempt)
    if ctx.attempt == 1:
        raise RetryableError("busy, come back later", retry_after=ctx.json()["after"])
    return b"done"


permanent = Kind("t.permanent", max_attempts=5)


@permanent.phase("work")
async def permanent_work(ctx: JobContext) -> bytes:
    calls.setdefault(ctx.job_id, []).append(ctx.attempt)
    raise PermanentError("this can never work")


strict = Kind("t.strict", max_attempts=5)


@strict.phase("parse")
async def strict_parse(ctx: JobContext) -> bytes:
    calls.setdefault(ctx.job_id, []).append(ctx.attempt)
    return str(ctx.json()["n"]).encode()


slowpoke = Kind("t.slowpoke", max_attempts=2, timeout=0.2, retry=RetryPolicy(base_delay=10.0, max_delay=10.0))


@slowpoke.phase("first")
async def slowpoke_first(ctx: JobContext) -> bytes:
    return b"quick"


@slowpoke.phase("stuck")
async def slowpoke_stuck(ctx: JobContext) -> bytes:
    calls.setdefault(ctx.job_id, []).append(ctx.attempt)
    await asyncio.Event().wait()  # never set: only the phase timeout ends this
    return b"unreachable"


KINDS = (echo, flaky, later, permanent, strict, slowpoke)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop_all()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_delayed_job_stays_scheduled_until_due(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, echo, b"hello", delay=60)
    assert job.state is JobState.SCHEDULED and job.run_at == clock.now() + 60
    await claim_round(app)
    clock.advance(59.5)
    await claim_round(app)
    assert (await app.service.get(job.id)).state is JobState.SCHEDULED
    assert job.id not in calls
    clock.advance(0.5)
    app.dispatcher.wake()
    final = await rec.wait_final(job.id)
    assert final.type is E.SUCCEEDED and final.job is not None and final.job.result == b"hello"
    assert rec.types(job.id) == [E.ENQUEUED, E.QUEUED, E.STARTED, E.PHASE_STARTED, E.PHASE_SUCCEEDED, E.SUCCEEDED]
    assert calls[job.id] == [1]


async def test_retries_with_backoff_until_failed(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, flaky)
    assert job.max_attempts == 3
    for attempt, (low, high) in enumerate([(5.0, 10.0), (10.0, 20.0)], start=1):
        event = await rec.wait(job.id, E.RETRY_SCHEDULED, count=attempt)
        assert event.job is not None and event.job.state is JobState.RETRYING
        delay = event.job.run_at - clock.now()
        assert low <= delay <= high, f"attempt {attempt}: backoff {delay} outside [{low}, {high}]"
        clock.advance(delay - 0.01)
        await claim_round(app)
        stored = await app.service.get(job.id)
        assert stored.state is JobState.RETRYING and calls[job.id] == list(range(1, attempt + 1)), "not before due"
        clock.advance(0.01)
        app.dispatcher.wake()
    final = await rec.wait_final(job.id)
    assert final.type is E.FAILED
    failed = await app.service.get(job.id)
    assert failed.state is JobState.FAILED and failed.attempt == 3 and calls[job.id] == [1, 2, 3]
    history = failed.error_history
    assert [(h.attempt, h.type, h.phase, h.retryable, h.interrupted) for h in history] == [
        (n, "RuntimeError", "work", True, False) for n in (1, 2, 3)]
    assert [h.message for h in history] == [f"attempt {n} broke" for n in (1, 2, 3)]
    assert failed.error == history[-1]
    assert failed.phases[0].state is PhaseState.FAILED
    assert rec.types(job.id).count(E.RETRY_SCHEDULED) == 2
    assert rec.types(job.id).count(E.STARTED) == 3


async def test_max_attempts_from_the_request_overrides_the_kind(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, flaky, max_attempts=1)
    assert (await rec.wait_final(job.id)).type is E.FAILED
    failed = await app.service.get(job.id)
    assert len(failed.error_history) == 1 and E.RETRY_SCHEDULED not in rec.types(job.id)


async def test_retry_after_is_honoured_exactly(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, later, b'{"after": 42}')
    event = await rec.wait(job.id, E.RETRY_SCHEDULED)
    assert event.job is not None and event.job.run_at == clock.now() + 42
    assert event.job.error is not None and event.job.error.type == "RetryableError"
    clock.advance(41.9)
    await claim_round(app)
    assert (await app.service.get(job.id)).state is JobState.RETRYING
    clock.advance(0.1)
    app.dispatcher.wake()
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    assert calls[job.id] == [1, 2]


async def test_retry_after_zero_runs_again_without_time_passing(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, later, b'{"after": 0}')
    assert (await rec.wait_final(job.id)).type is E.SUCCEEDED
    assert calls[job.id] == [1, 2]


async def test_permanent_error_fails_at_once(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, permanent)
    assert (await rec.wait_final(job.id)).type is E.FAILED
    failed = await app.service.get(job.id)
    assert calls[job.id] == [1] and failed.attempt == 1
    assert [(h.type, h.retryable, h.phase) for h in failed.error_history] == [("PermanentError", False, "work")]
    assert failed.phases[0].state is PhaseState.FAILED and failed.phases[0].error == failed.error
    assert E.RETRY_SCHEDULED not in rec.types(job.id)


async def test_malformed_payload_fails_at_once(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, strict, b"not json")
    assert (await rec.wait_final(job.id)).type is E.FAILED
    failed = await app.service.get(job.id)
    assert calls[job.id] == [1]
    assert [(h.type, h.retryable) for h in failed.error_history] == [("MalformedPayload", False)]
    assert "not valid JSON" in failed.error_history[0].message


async def test_phase_timeout_is_a_retryable_failure(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, slowpoke)
    assert job.timeout == 0.2
    event = await rec.wait(job.id, E.RETRY_SCHEDULED)
    assert event.job is not None
    error = event.job.error
    assert error is not None
    assert (error.type, error.retryable, error.phase, error.attempt) == ("TIMEOUT", True, "stuck", 1)
    assert [p.state for p in event.job.phases] == [PhaseState.SUCCEEDED, PhaseState.FAILED]
    clock.advance(10)
    app.dispatcher.wake()
    assert (await rec.wait_final(job.id)).type is E.FAILED
    failed = await app.service.get(job.id)
    assert [(h.type, h.attempt, h.phase) for h in failed.error_history] == [
        ("TIMEOUT", 1, "stuck"), ("TIMEOUT", 2, "stuck")]
    assert calls[job.id] == [1, 2], "the second attempt resumed at the phase that timed out"


async def test_a_failed_job_cannot_be_cancelled(harness: Harness, clock: FakeClock) -> None:
    app = await harness.start(*KINDS, clock=clock)
    rec = Recorder(app.hub)
    job = await enqueue(app, permanent)
    await rec.wait_final(job.id)
    with pytest.raises(InvalidTransition):
        await app.service.cancel(job.id, "too late")
    assert (await app.service.get(job.id)).state is JobState.FAILED
