"""The watch hub of a replica on a shared store, fed as the app feeds it: its own commits
(`publish`) and the events tailed from the database (`deliver_remote`), which only brings the
events of watched jobs. What it knew of a job while nobody watched it must not make a later
watcher wait for events the tail has already gone past.
"""

from __future__ import annotations

import pytest
from jobwire_server.domain.models import Event
from jobwire_server.domain.states import EventType
from jobwire_server.engine.hub import WatchHub

pytestmark = pytest.mark.timeout(30)

JOB = "01a228a7-dfd3-7359-8955-fa8bc756f980"


def event(sequence: int, kind: EventType, job: str = JOB) -> Event:
    return Event(job, sequence, kind, 1.0 + sequence, "default", "k")


def drain(sub: object) -> list[int]:
    buffer = sub._buffer  # type: ignore[attr-defined]
    out = [e.sequence for e in buffer]
    buffer.clear()
    return out


def test_a_watcher_of_a_job_run_elsewhere_gets_its_events_after_this_replica_wrote_some_unwatched() -> None:
    hub = WatchHub(shared=True)
    hub.publish([event(1, EventType.ENQUEUED)])  # enqueued here, nobody watching
    # 2 and 3 (STARTED, PHASE_STARTED) were committed by the replica running it: not watched,
    # so the tail went past them without bringing them.
    hub.publish([event(4, EventType.CANCEL_REQUESTED)])  # the cancel, recorded here
    sub = hub.subscribe_job(JOB)  # a WatchJob opens; its snapshot shows sequence 4
    hub.deliver_remote([event(4, EventType.CANCEL_REQUESTED), event(5, EventType.CANCELLED)])
    assert 5 in drain(sub), "the terminal event reached the watcher"
    assert hub.pending == 0


def test_a_job_watched_again_later_starts_afresh() -> None:
    hub = WatchHub(shared=True)
    first = hub.subscribe_job(JOB)
    hub.deliver_remote([event(1, EventType.ENQUEUED), event(2, EventType.STARTED)])
    assert drain(first) == [1, 2]
    first.close()
    # 3 to 6 committed elsewhere while nobody watched: never tailed here.
    second = hub.subscribe_job(JOB)  # its snapshot shows sequence 6
    hub.deliver_remote([event(7, EventType.SUCCEEDED)])
    assert drain(second) == [7]


def test_events_of_jobs_nobody_watches_are_not_held() -> None:
    hub = WatchHub(shared=True)
    for n in range(100):
        job = f"{n:08d}-0000-7000-8000-000000000000"
        hub.publish([event(1, EventType.ENQUEUED, job)])  # enqueued here, run elsewhere
        hub.publish([event(6, EventType.WEBHOOK_DELIVERED, job)])  # its webhook, sent from here
    assert hub.pending == 0
    assert hub.wanted() == frozenset(), "the tail is not asked for jobs nobody watches"
