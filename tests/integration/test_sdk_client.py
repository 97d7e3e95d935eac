"""The async SDK against the real server over loopback gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import jobwire
import pytest
from jobwire import EventType, JobState, PhaseState

from tests.conftest import ServerProcess

SLEEP = {"seconds": 0.2, "phases": 2}
FAR = 3600.0  # a delay that keeps a job SCHEDULED for the whole test
WAIT = 30.0  # upper bound for anything a test waits on; normally done in well under a second


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[jobwire.Client]:
    async with jobwire.Client(server.target) as client:
        yield client


def _queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


async def test_sleep_job_enqueue_watch_result(client: jobwire.Client) -> None:
    handle = await client.enqueue("sleep", payload=SLEEP)
    assert handle.job is not None and handle.job.state in (JobState.QUEUED, JobState.RUNNING)
    assert not handle.deduplicated

    async with asyncio.timeout(WAIT):
        events = [event async for event in handle.watch()]
    assert events[0].type is EventType.SNAPSHOT
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "sequences strictly increase"
    assert events[-1].type is EventType.SUCCEEDED
    assert events[-1].job is not None and events[-1].job.state is JobState.SUCCEEDED

    await handle.result(timeout=WAIT)
    job = await handle.get()
    assert job.state is JobState.SUCCEEDED
    assert len(job.phases) == 2
    assert all(p.state is PhaseState.SUCCEEDED for p in job.phases)
    assert job.finish_time is not None and job.attempt == 1


async def test_noop_result_is_the_payload(client: jobwire.Client) -> None:
    payload = {"hello": "world", "n": [1, 2, 3]}
    handle = await client.enqueue("noop", payload=payload)
    result = await handle.result(timeout=WAIT)
    assert json.loads(result) == payload


async def test_a_failing_job_raises_job_failed(client: jobwire.Client) -> None:
    handle = await client.enqueue("sleep", payload={"seconds": "not a number"})  # rejected by the handler
    with pytest.raises(jobwire.JobFailed) as info:
        await handle.result(timeout=WAIT)
    assert info.value.job.state is JobState.FAILED
    assert info.value.error is not None and not info.value.error.retryable
    assert info.value.error.message  # the handler says what is wrong with the payload


async def test_cancel_a_delayed_job(client: jobwire.Client) -> None:
    handle = await client.enqueue("noop", delay=FAR)
    assert handle.job is not None and handle.job.state is JobState.SCHEDULED
    job = await handle.cancel(reason="not needed")
    assert job.state is JobState.CANCELLED
    assert job.cancel_reason == "not needed"
    assert (await handle.cancel()).state is JobState.CANCELLED  # cancelling twice changes nothing
    with pytest.raises(jobwire.JobCancelled) as info:
        await handle.result(timeout=WAIT)
    assert info.value.job.cancel_reason == "not needed"


async def test_retry_a_cancelled_job_then_from_start(client: jobwire.Client) -> None:
    payload = {"retry": True}
    handle = await client.enqueue("noop", payload=payload, delay=FAR)
    await handle.cancel()
    retried = await handle.retry()
    assert retried.state is JobState.QUEUED
    assert json.loads(await handle.result(timeout=WAIT)) == payload

    with pytest.raises(jobwire.InvalidTransition) as info:
        await handle.retry()  # SUCCEEDED needs from_start
    assert info.value.reason == "INVALID_TRANSITION"
    again = await handle.retry(from_start=True)
    assert again.state is JobState.QUEUED
    assert json.loads(await handle.result(timeout=WAIT)) == payload
    assert (await handle.get()).attempt >= 2


async def test_list_jobs_pages_through_everything(client: jobwire.Client) -> None:
    batch = uuid.uuid4().hex
    created = [(await client.enqueue("noop", delay=FAR, labels={"batch": batch})).id for _ in range(7)]
    listed = [job.id async for job in client.list_jobs(labels={"batch": batch}, page_size=3)]
    assert listed == sorted(created, reverse=True)  # newest first, every job exactly once

    first, token = await client.list_jobs_page(labels={"batch": batch}, page_size=3)
    assert len(first) <= 3 and token
    second, _ = await client.list_jobs_page(labels={"batch": batch}, page_size=3, page_token=token)
    assert not {j.id for j in first} & {j.id for j in second}

    scheduled = [j.id async for j in client.list_jobs(labels={"batch": batch}, states=[JobState.SCHEDULED])]
    assert sorted(scheduled) == sorted(created)
    assert [j async for j in client.list_jobs(labels={"batch": batch}, states=["SUCCEEDED"])] == []


async def test_cancel_jobs_and_retry_jobs_by_filter(client: jobwire.Client) -> None:
    queue = _queue()
    handles = [await client.enqueue("noop", queue=queue, delay=FAR, labels={"env": env})
               for env in ("prod", "staging", "dev")]
    counted = await client.cancel_jobs(queue=queue, label_in={"env": ["prod", "staging"]}, dry_run=True)
    assert (counted.matched, counted.changed, counted.dry_run) == (2, 0, True)
    done = await client.cancel_jobs(queue=queue, label_in={"env": ["prod", "staging"]}, reason="bulk")
    assert (done.matched, done.changed, dict(done.skipped)) == (2, 2, {})
    finished = [j.id async for j in client.list_jobs(queue=queue, label_keys=["env"],
                                                      finished_after=datetime.now(UTC) - timedelta(minutes=5))]
    assert finished == [handles[1].id, handles[0].id]
    retried = await client.retry_jobs(queue=queue, states=[JobState.CANCELLED, JobState.SCHEDULED])
    assert (retried.matched, retried.changed, dict(retried.skipped)) == (3, 2, {"STILL_ACTIVE": 1})
    with pytest.raises(jobwire.InvalidArgument) as info:
        await client.cancel_jobs()
    assert [field for field, _ in info.value.violations] == ["filter"]


async def test_watch_replays_after_a_sequence(client: jobwire.Client) -> None:
    handle = await client.enqueue("sleep", payload=SLEEP)
    await handle.result(timeout=WAIT)
    async with asyncio.timeout(WAIT):
        full = [e async for e in handle.watch(after_sequence=0)]
        assert [e.type for e in full] == [EventType.SNAPSHOT]  # terminal: the stream ends after the snapshot
        replay = [e async for e in handle.watch(after_sequence=1)]
    assert replay and all(e.sequence > 1 for e in replay)
    assert EventType.SNAPSHOT not in {e.type for e in replay}
    assert replay[-1].type is EventType.SUCCEEDED
    assert replay[-1].sequence == full[0].sequence


class _Proxy:
    """A loopback TCP proxy whose connections a test can cut, to drop streams mid-flight."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.target = ""

    async def __aenter__(self) -> _Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.target = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def drop(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


async def test_watch_resumes_transparently_after_a_dropped_connection(server: ServerProcess) -> None:
    async with _Proxy(server.target) as proxy, jobwire.Client(proxy.target) as client:
        handle = await client.enqueue("sleep", payload={"seconds": 1.0, "phases": 4})
        seen: list[jobwire.JobEvent] = []
        async with asyncio.timeout(WAIT):
            async for event in handle.watch():
                seen.append(event)
                if len(seen) == 2:
                    proxy.drop()  # the stream (and channel) dies; the SDK must resubscribe
        assert proxy.connections >= 2
    sequences = [e.sequence for e in seen]
    assert sequences == sorted(set(sequences))
    assert seen[-1].type is EventType.SUCCEEDED

    async with jobwire.Client(server.target) as direct:
        stored = [e.sequence async for e in direct.handle(handle.id).watch(after_sequence=seen[0].sequence)]
    assert sequences[1:] == stored, "no event lost or repeated across the resume"


async def test_typed_errors(client: jobwire.Client) -> None:
    with pytest.raises(jobwire.JobNotFound) as missing:
        await client.get_job(str(uuid.uuid4()))
    assert missing.value.reason == "JOB_NOT_FOUND"

    with pytest.raises(jobwire.InvalidArgument) as bad:
        await client.enqueue("not a kind!")
    assert "kind" in [field for field, _ in bad.value.violations]

    with pytest.raises(jobwire.InvalidArgument) as unknown:
        await client.enqueue("no-such-kind")
    assert unknown.value.reason == "UNKNOWN_KIND"

    with pytest.raises(jobwire.InvalidArgument) as priority:
        await client.enqueue("noop", priority=11)
    assert "priority" in [field for field, _ in priority.value.violations]

    done = await client.enqueue("noop")
    await done.result(timeout=WAIT)
    with pytest.raises(jobwire.InvalidTransition):
        await done.cancel()

    with pytest.raises(jobwire.JobNotFound):
        async for _ in client.handle(str(uuid.uuid4())).watch():
            pass


async def test_request_id_makes_enqueue_idempotent(client: jobwire.Client) -> None:
    request_id = uuid.uuid4().hex
    first = await client.enqueue("noop", payload={"a": 1}, delay=FAR, request_id=request_id)
    again = await client.enqueue("noop", payload={"a": 1}, delay=FAR, request_id=request_id)
    assert again.id == first.id
    with pytest.raises(jobwire.AlreadyExists) as info:
        await client.enqueue("noop", payload={"a": 2}, delay=FAR, request_id=request_id)
    assert info.value.reason == "REQUEST_ID_REUSED"


async def test_dedupe_key_folds_into_the_active_job(client: jobwire.Client) -> None:
    queue = _queue()
    first = await client.enqueue("noop", queue=queue, delay=FAR, dedupe_key="nightly")
    second = await client.enqueue("noop", queue=queue, delay=FAR, dedupe_key="nightly")
    assert second.deduplicated and second.id == first.id
    assert not first.deduplicated


async def test_enqueue_many_and_queue_stats(client: jobwire.Client) -> None:
    queue = _queue()
    specs = [jobwire.EnqueueSpec(kind="noop", queue=queue, delay=FAR, payload={"i": i}) for i in range(3)]
    handles = await client.enqueue_many(specs)
    assert len({h.id for h in handles}) == 3
    jobs = [await h.get() for h in handles]
    assert [json.loads(j.payload)["i"] for j in jobs] == [0, 1, 2]
    (stats,) = await client.queue_stats(queue)
    assert stats.queue == queue and stats.scheduled == 3 and stats.queued == 0


async def test_watch_events_sees_a_job_finish(client: jobwire.Client) -> None:
    queue = _queue()
    events = client.watch_events(queues=[queue], types=[EventType.SUCCEEDED])
    first = asyncio.ensure_future(anext(events))
    # The job runs about a second, far longer than subscribing takes, so its SUCCEEDED is seen live.
    handle = await client.enqueue("sleep", queue=queue, payload={"seconds": 1.0, "phases": 1})
    try:
        event = await asyncio.wait_for(first, WAIT)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert event.job_id == handle.id and event.type is EventType.SUCCEEDED
