"""The blocking facade `jobwire.sync.Client` against the real server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import jobwire
import jobwire.sync
import pytest
from jobwire import EventType, JobState, PhaseState

from tests.conftest import ServerProcess

WAIT = 30.0


@pytest.fixture
def client(server: ServerProcess) -> Iterator[jobwire.sync.Client]:
    with jobwire.sync.Client(server.target) as client:
        yield client


def test_enqueue_watch_result(client: jobwire.sync.Client) -> None:
    handle = client.enqueue("sleep", payload={"seconds": 0.2, "phases": 2})
    events = list(handle.watch())
    assert events[0].type is EventType.SNAPSHOT
    assert events[-1].type is EventType.SUCCEEDED
    snapshot = events[0].job
    assert snapshot is not None
    # Every phase starts either before the snapshot (then the snapshot shows it) or while we watch.
    started_before = {p.name for p in snapshot.phases if p.state is not PhaseState.PENDING}
    started_live = {e.phase for e in events if e.type is EventType.PHASE_STARTED}
    assert started_before | started_live == {p.name for p in snapshot.phases}
    assert len(snapshot.phases) == 2
    handle.result(timeout=WAIT)
    assert handle.get().state is JobState.SUCCEEDED


def test_noop_cancel_retry_list_and_errors(client: jobwire.sync.Client) -> None:
    assert json.loads(client.enqueue("noop", payload={"k": "v"}).result(timeout=WAIT)) == {"k": "v"}

    batch = uuid.uuid4().hex
    delayed = client.enqueue("noop", payload={"later": 1}, delay=3600, labels={"batch": batch})
    assert delayed.cancel(reason="changed my mind").state is JobState.CANCELLED
    with pytest.raises(jobwire.JobCancelled):
        delayed.result(timeout=WAIT)
    assert delayed.retry().state is JobState.QUEUED
    assert json.loads(delayed.result(timeout=WAIT)) == {"later": 1}

    assert [j.id for j in client.list_jobs(labels={"batch": batch}, page_size=1)] == [delayed.id]
    with pytest.raises(jobwire.JobNotFound):
        client.get_job(str(uuid.uuid4()))
    with pytest.raises(jobwire.InvalidArgument):
        client.enqueue("bad kind!")


def test_result_timeout_and_early_close(client: jobwire.sync.Client) -> None:
    handle = client.enqueue("noop", delay=3600)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)
    events = handle.watch()
    assert next(events).type is EventType.SNAPSHOT
    events.close()  # closing a live watch early must not hang or break the client
    assert handle.cancel().state is JobState.CANCELLED
    stats = client.queue_stats()
    assert any(s.cancelled >= 1 for s in stats)
