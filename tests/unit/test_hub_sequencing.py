"""The watch hub on a shared store: each job's events reach streams once, in order, without gaps,
whether they come from this replica's commits or from tailing the other replicas'."""

from __future__ import annotations

from jobwire_server.domain.models import Event
from jobwire_server.domain.states import EventType
from jobwire_server.engine.hub import EventFilter, Subscription, WatchHub
from jobwire_server.engine.replicas import _by_job_sequence

JOB = "01890000-0000-7000-8000-00000000000a"
OTHER = "01890000-0000-7000-8000-00000000000b"


def ev(seq: int, job: str = JOB) -> Event:
    return Event(job, seq, EventType.PROGRESS, 1.0, "default", "k")


def drained(sub: Subscription) -> list[tuple[str, int]]:
    out = []
    while sub._buffer:
        event = sub._buffer.popleft()
        out.append((event.job_id[-1], event.sequence))
    return out


async def test_events_from_both_sources_reach_a_stream_once_and_in_order() -> None:
    hub = WatchHub(shared=True)
    sub = hub.subscribe_all(EventFilter())
    hub.deliver_remote([ev(1), ev(2)])   # enqueued and claimed elsewhere
    hub.publish([ev(4)])                 # committed here before the tail brought 3: held back
    assert drained(sub) == [("a", 1), ("a", 2)]
    assert hub.pending == 1
    hub.deliver_remote([ev(3), ev(4)])   # the tail brings 3, and 4 again
    assert drained(sub) == [("a", 3), ("a", 4)]
    assert hub.pending == 0


async def test_a_local_event_of_an_unknown_watched_job_waits_for_the_tail() -> None:
    hub = WatchHub(shared=True)
    told: list[bool] = []
    hub.on_waiting = lambda: told.append(True)
    sub = hub.subscribe_job(JOB)
    hub.publish([ev(5)])  # 1-4 were committed on other replicas and are not tailed yet
    assert drained(sub) == [] and told == [True]
    assert hub.wanted() == frozenset({JOB})
    hub.deliver_remote([ev(4), ev(5), ev(6)])  # the tail starts the job at 4 (the stream read 1-3 from storage)
    assert drained(sub) == [("a", 4), ("a", 5), ("a", 6)]


async def test_a_job_nobody_watches_leaves_nothing_behind() -> None:
    hub = WatchHub(shared=True)
    hub.publish([ev(7)])  # nobody watches: nothing is held or remembered
    assert hub.pending == 0 and hub.wanted() == frozenset()
    sub = hub.subscribe_all(EventFilter())
    hub.publish([ev(8)])  # its 7 may be on its way from another replica: 8 waits for the tail
    assert drained(sub) == [] and hub.pending == 1
    hub.deliver_remote([ev(8)])
    assert drained(sub) == [("a", 8)] and hub.pending == 0


async def test_tailed_events_out_of_order_across_jobs_are_each_sequenced() -> None:
    hub = WatchHub(shared=True)
    sub = hub.subscribe_all(EventFilter())
    # Two transactions took a job's row lock in the opposite order of their transaction ids.
    hub.deliver_remote([ev(1), ev(1, OTHER), ev(3), ev(2, OTHER)])
    hub.deliver_remote([ev(2)])
    assert drained(sub) == [("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 3)]


async def test_a_firehose_wants_every_job_and_metrics_see_only_local_commits() -> None:
    seen: list[int] = []
    hub = WatchHub(shared=True, tap=lambda events: seen.extend(e.sequence for e in events))
    hub.subscribe_all(EventFilter())
    assert hub.wanted() is None
    hub.deliver_remote([ev(1)])
    hub.publish([ev(2)])
    assert seen == [2]


async def test_an_unshared_hub_publishes_as_it_always_did() -> None:
    hub = WatchHub()
    sub = hub.subscribe_all(EventFilter())
    hub.publish([ev(5), ev(3)])
    assert drained(sub) == [("a", 5), ("a", 3)]


def test_a_tail_batch_is_put_in_each_jobs_sequence_order() -> None:
    batch = [ev(6), ev(1, OTHER), ev(5), ev(2, OTHER)]  # 6 was written by the transaction that began first
    assert [(e.job_id[-1], e.sequence) for e in _by_job_sequence(batch)] == [("a", 5), ("a", 6), ("b", 1), ("b", 2)]
