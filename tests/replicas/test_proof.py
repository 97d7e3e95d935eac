"""Proof with replicas: three `jobwire serve` processes on one PostgreSQL database run 5,000 jobs
of three phases while one replica is SIGKILLed (and restarted) and another is SIGSTOPped past its
lease and resumed (a zombie). Judged from outside the service: the ledger the handlers keep
(tests/replicas/ledger.py: job, attempt, replica, phase, start and end), the database read
directly, the webhooks a real receiver got, and a WatchEvents stream on every replica.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb

from tests.conftest import StartServer
from tests.receiver import Received, Receiver
from tests.replicas.cluster import (
    Cluster,
    EventStream,
    StoredEvent,
    connect,
    count_state,
    stored_events,
    stub,
    unrescued_expired_leases,
    wait_until,
)
from tests.replicas.judge import Verdict, attempts_of, judge

pytestmark = pytest.mark.timeout(150)

JOBS = 5000
PHASES = ("fetch", "transform", "store")
LEASE_TTL = 2.0
SEED = 5150
#: Enqueues in flight at once, and how long one may take before it is sent to another replica.
SENDERS = 24
CALL_TIMEOUT = 2.0
#: Acknowledged enqueues when r1 is killed, and when r2 is stopped.
KILL_AT = 1200
STOP_AT = 2600
#: Failures after which an enqueue is sent again (to another replica).
RESEND_ON = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
#: What a replica logs when the store refuses an outcome of an attempt that was rescued meanwhile.
_DROPPED = re.compile(r"job (\S+) changed under attempt (\d+); outcome dropped")
TERMINAL = [pb.EVENT_TYPE_SUCCEEDED, pb.EVENT_TYPE_FAILED, pb.EVENT_TYPE_CANCELLED]
FLAGS: dict[str, Any] = {
    "lease_ttl": LEASE_TTL, "concurrency": 32,
    "webhook_allow": "127.0.0.1/32", "webhook_timeout": "2s", "webhook_retry_schedule": ",".join(["0.2s"] * 20),
    "webhook_concurrency": 32, "webhook_host_concurrency": 16,
    # Room for every terminal event of the run: a stream is never ended as too slow here (that
    # path has its own test), so each stream's contents can be judged whole.
    "watch_buffer": 2 * JOBS,
}


class Producer:
    """Sends each enqueue (with its request id) to a random replica; after a failure, sends it
    again to another one, until one acknowledges it."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.acked: dict[str, str] = {}  # request id → job id
        self.failures: Counter[str] = Counter()
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def send(self, request: pb.EnqueueRequest, only: str | None = None) -> None:
        avoid = ""
        while True:
            name = only or self.rng.choice([n for n in self.cluster.replicas if n != avoid])
            target = self.cluster.replicas[name].target
            channel = self._channels.get(target) or self._channels.setdefault(target, grpc.aio.insecure_channel(target))
            try:
                reply = await stub(channel).Enqueue(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                assert error.code() in RESEND_ON, error
                self.failures[f"{name}:{error.code().name}"] += 1
                avoid, only = name, None
                continue
            self.acked[request.request_id] = reply.job.id
            return

    async def send_all(self, requests: list[pb.EnqueueRequest]) -> None:
        queue: asyncio.Queue[pb.EnqueueRequest] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)

        async def sender() -> None:
            while not queue.empty():
                await self.send(queue.get_nowait())

        await asyncio.gather(*(sender() for _ in range(SENDERS)))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@dataclass
class Run:
    """What one run left behind, read once everything has settled."""

    cluster: Cluster
    producer: Producer
    requests: list[pb.EnqueueRequest]
    streams: dict[str, list[EventStream]]
    chaos: dict[str, float]
    timings: dict[str, float]
    events: dict[str, list[StoredEvent]] = field(default_factory=dict)
    requests_table: dict[str, str] = field(default_factory=dict)
    jobs_table: dict[str, tuple[str, int]] = field(default_factory=dict)
    deliveries: list[tuple[str, str, str]] = field(default_factory=list)
    hooks: list[Received] = field(default_factory=list)
    #: Jobs whose terminal event r1's stream on the restarted process must show.
    owed: set[str] = field(default_factory=set)

    @property
    def job_ids(self) -> set[str]:
        return set(self.producer.acked.values())


async def test_three_replicas_one_killed_one_frozen(pg_url: str, start_server: StartServer, tmp_path: Path) -> None:
    """What "every replica's WatchEvents saw every terminal event" means here, per replica:

    - r3 stayed up: its one stream shows every job's SUCCEEDED, once, with its stored sequence.
    - r2 was frozen (SIGSTOP) past its lease, then resumed: its stream stayed open, and when the
      replica woke it caught up from the events table, so it too shows every SUCCEEDED, once
      (the watch buffer holds every terminal event of the run, so it cannot be ended as too
      slow; test_frozen_watch covers a stream that is).
    - r1 was SIGKILLed: nothing can show what happened while it was dead. Its first stream ended
      with the kill and showed only real terminal events, each once; its stream on the restarted
      process shows every terminal event stored after that stream's first message (any event
      whose time is later than that message's arrival committed after the stream subscribed).

    The SIGSTOP lasts at least the lease ttl (a deliberate pause: the point is to outlive the
    lease), and then until the database shows every expired lease rescued. Under this load r2 is
    nearly always frozen inside a transaction, holding row locks the others' rescues need; the
    replicas' URLs end such a session after 1 s (cluster.IDLE_IN_TRANSACTION, under the 2 s
    lease ttl), and its writes are refused when it wakes.
    """
    conn = await connect(pg_url)
    try:
        run = await _run(Cluster(start_server, pg_url, tmp_path / "ledger", **FLAGS), conn)
    finally:
        await conn.close()

    # One job per request id, whichever replicas it was sent to.
    assert set(run.producer.acked) == {r.request_id for r in run.requests}
    assert len(run.job_ids) == JOBS, "one job per request id"
    assert run.requests_table == run.producer.acked, "the stored request ids name the acknowledged jobs"
    assert set(run.jobs_table) == run.job_ids, "no job missing or extra"

    verdicts, interrupted_on = _check_jobs(run)
    _check_webhooks(run)
    _check_streams(run)

    # The chaos really happened: both replicas had attempts rescued; the zombie reported on its
    # rescued attempts when it woke, and the service refused those reports (its log says which).
    late = [line for v in verdicts.values() for line in v.late_ends]
    assert interrupted_on["r1.1"] > 0, f"no attempt of the killed replica was rescued: {interrupted_on}"
    assert interrupted_on["r2.1"] > 0, f"no attempt of the frozen replica was rescued: {interrupted_on}"
    assert all(line["replica"] == "r2.1" for line in late), "only the zombie finishes phases after a rescue"
    dropped = {(m[1], int(m[2])) for m in _DROPPED.finditer(run.cluster.replicas["r2"].log())}
    rescued_from_zombie = {(job_id, number) for job_id, v in verdicts.items() for number, replica in v.runners.items()
                           if replica == "r2.1" and number in v.interrupted}
    assert dropped, "the zombie reported nothing late"
    assert dropped <= rescued_from_zombie, "only reports on rescued attempts were refused"
    worked_after_thaw = sum(1 for line in run.cluster.ledger() if line["replica"] == "r2.1"
                            and line["event"] == "start" and line["time"] > run.chaos["thawed"])
    assert worked_after_thaw > 0, "the resumed replica went back to work"

    t = run.timings
    print(f"\nproof with replicas: {JOBS} jobs enqueued in {t['enqueued']:.1f}s, all SUCCEEDED at "
          f"{t['succeeded']:.1f}s, webhooks at {t['delivered']:.1f}s; resends {dict(run.producer.failures)}; "
          f"r2 frozen {run.chaos['thawed'] - run.chaos['frozen']:.1f}s; attempts rescued by runner "
          f"{dict(interrupted_on)}; {sum(v.reruns for v in verdicts.values())} phase reruns; zombie reports refused "
          f"{len(dropped)} (of {len(rescued_from_zombie)} rescued attempts), {len(late)} of them on phases that "
          f"ended after the rescue; r2 started {worked_after_thaw} phases after it resumed; "
          "streams: " + ", ".join(f"{s.label} {len(s.seen)}" for g in run.streams.values() for s in g)
          + f" (r1's new stream owed {len(run.owed)})")


async def _run(cluster: Cluster, conn: asyncpg.Connection) -> Run:
    """Start three replicas and a stream on each, enqueue every job while r1 is killed and
    restarted and r2 is frozen and resumed; wait until every job, webhook and stream is done."""
    producer = Producer(cluster, random.Random(SEED))
    streams: dict[str, list[EventStream]] = defaultdict(list)
    watch = pb.WatchEventsRequest(kinds=["rep.ledger"], types=TERMINAL)
    chaos: dict[str, float] = {}
    try:
        async with Receiver() as receiver:
            for name in ("r1", "r2", "r3"):
                replica = cluster.start(name)
                streams[name].append(EventStream(replica.identity, replica.target, watch).open())
            requests = [pb.EnqueueRequest(kind="rep.ledger", request_id=str(uuid.uuid4()),
                                          payload=str(n).encode(), webhook=pb.WebhookConfig(url=receiver.url()))
                        for n in range(JOBS)]
            # The first job through each replica; once every stream has shown all three, each is
            # subscribed, and from then on every terminal event is on it.
            await asyncio.gather(*(producer.send(r, only=name)
                                   for r, name in zip(requests, ("r1", "r2", "r3"), strict=False)))
            for group in streams.values():
                await group[0].wait_jobs(set(producer.acked.values()), within=20)

            async def kill_and_freeze() -> None:
                await wait_until(_at_least(producer.acked, KILL_AT), 60, f"{KILL_AT} enqueues acknowledged")
                cluster.replicas["r1"].kill()
                chaos["killed"] = time.time()
                r1 = await asyncio.to_thread(cluster.start, "r1")
                streams["r1"].append(EventStream(r1.identity, r1.target, watch).open())

                await wait_until(_at_least(producer.acked, STOP_AT), 60, f"{STOP_AT} enqueues acknowledged")
                r2 = cluster.replicas["r2"]
                r2.freeze()
                chaos["frozen"] = time.time()
                try:
                    await asyncio.sleep(LEASE_TTL)  # sleep-ok: the deliberate pause, past every lease r2 holds
                    await wait_until(lambda: _none(unrescued_expired_leases(conn)), 30,
                                     "the others to rescue every expired lease")
                finally:
                    r2.thaw()
                chaos["thawed"] = time.time()

            started = time.monotonic()
            await asyncio.gather(producer.send_all(requests[3:]), kill_and_freeze())
            run = Run(cluster, producer, requests, streams, chaos, {"enqueued": time.monotonic() - started})
            await _settle(run, conn, receiver, started)
            return run
    finally:
        for stream in (s for group in streams.values() for s in group):
            await stream.close()
        await producer.close()


async def _settle(run: Run, conn: asyncpg.Connection, receiver: Receiver, started: float) -> None:
    """Wait until every job succeeded, every webhook is delivered and recorded, and every stream
    has shown what it must; then read what the judging needs."""
    job_ids = run.job_ids
    await wait_until(lambda: _equals(count_state(conn, "SUCCEEDED", "rep.ledger"), JOBS), 90,
                     "every job SUCCEEDED")
    run.timings["succeeded"] = time.monotonic() - started
    hooked = _Hooked(receiver)
    await wait_until(_async(lambda: job_ids <= hooked.jobs()), 60, "a webhook of every job")
    await wait_until(lambda: _equals(_delivered(conn), JOBS), 30, "every delivery recorded DELIVERED")
    run.timings["delivered"] = time.monotonic() - started
    for name in ("r2", "r3"):
        await run.streams[name][0].wait_jobs(job_ids, within=30)
    run.events = await stored_events(conn)
    after_restart = run.streams["r1"][1]
    await wait_until(_async(lambda: after_restart.seen), 30, "a first event on r1's new stream")
    since = after_restart.seen[0].at
    run.owed = {job for job in job_ids if _terminal(run.events[job]).time > since}
    await after_restart.wait_jobs(run.owed, within=30)
    run.requests_table = dict(await conn.fetch("SELECT request_id, job_id::text FROM requests"))
    run.jobs_table = {row[0]: (row[1], row[2]) for row in await conn.fetch(
        "SELECT id::text, state, seq FROM jobs")}
    run.deliveries = [tuple(row) for row in await conn.fetch(
        "SELECT job_id::text, event_type, state FROM deliveries")]
    run.hooks = list(receiver.requests)


def _check_jobs(run: Run) -> tuple[dict[str, Verdict], Counter[str]]:
    """Every job SUCCEEDED exactly once; gapless sequences; a phase ran twice only after an
    INTERRUPTED record (see judge.py). Returns each job's verdict and the rescued attempts
    counted by the replica that had run them."""
    assert {state for state, _ in run.jobs_table.values()} == {"SUCCEEDED"}
    ledger: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in run.cluster.ledger():
        ledger[line["job"]].append(line)
    assert set(ledger) == run.job_ids, "every job's phases ran (the ledger knows no other job)"
    verdicts = {}
    interrupted_on: Counter[str] = Counter()
    for job_id in run.job_ids:
        events = run.events[job_id]
        assert len(events) == run.jobs_table[job_id][1], f"job {job_id}: its last sequence is its last event"
        attempts = attempts_of(job_id, events, PHASES)
        verdicts[job_id] = verdict = judge(job_id, attempts, ledger[job_id])
        for attempt in attempts:
            if attempt.interrupted is not None:
                interrupted_on[verdict.runners.get(attempt.number, "(no phase started)")] += 1
    return verdicts, interrupted_on


def _check_webhooks(run: Run) -> None:
    """Every webhook delivered: one outbox row per job (its SUCCEEDED), delivered; the receiver got
    it, always under one webhook-id (a resend after a frozen or killed sender keeps the id)."""
    assert sorted((d[1], d[2]) for d in run.deliveries) == [("SUCCEEDED", "DELIVERED")] * JOBS
    assert sorted(d[0] for d in run.deliveries) == sorted(run.job_ids)
    assert all([e.type for e in run.events[j]].count("WEBHOOK_DELIVERED") == 1 for j in run.job_ids)
    hook_ids: dict[str, set[str]] = defaultdict(set)
    for hook in run.hooks:
        assert hook.json()["type"] == "job.succeeded"
        hook_ids[hook.json()["data"]["jobId"]].add(hook.headers["webhook-id"])
    assert set(hook_ids) == run.job_ids
    assert all(len(ids) == 1 for ids in hook_ids.values()), "one stable webhook-id per job"


def _check_streams(run: Run) -> None:
    """See the test's docstring."""
    terminal_seq = {job: _terminal(run.events[job]).seq for job in run.job_ids}
    for name in ("r2", "r3"):
        (stream,) = run.streams[name]
        assert stream.ended is None, f"{stream.label}'s stream ended: {stream.ended}"
        _assert_real_and_once(stream, terminal_seq)
        assert stream.jobs() == run.job_ids, f"{stream.label} missed {len(run.job_ids - stream.jobs())} events"
    before_kill, after_restart = run.streams["r1"]
    assert before_kill.ended is not None and before_kill.ended[0] == grpc.StatusCode.UNAVAILABLE, before_kill.ended
    assert after_restart.ended is None, after_restart.ended
    for stream in (before_kill, after_restart):
        _assert_real_and_once(stream, terminal_seq)
    assert run.owed <= after_restart.jobs()


class _Hooked:
    """The jobs the receiver got a webhook of (its requests parsed once each)."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._parsed = 0
        self._jobs: set[str] = set()

    def jobs(self) -> set[str]:
        for hook in self._receiver.requests[self._parsed:]:
            self._jobs.add(hook.json()["data"]["jobId"])
        self._parsed = len(self._receiver.requests)
        return self._jobs


def _terminal(events: list[Any]) -> Any:
    (final,) = [e for e in events if e.type in ("SUCCEEDED", "FAILED", "CANCELLED")]
    return final


def _assert_real_and_once(stream: EventStream, terminal_seq: dict[str, int]) -> None:
    jobs = [s.job_id for s in stream.seen]
    assert len(jobs) == len(set(jobs)), f"{stream.label} showed a terminal event twice"
    for seen in stream.seen:
        assert seen.type == pb.EVENT_TYPE_SUCCEEDED, seen
        assert terminal_seq[seen.job_id] == seen.sequence, f"{stream.label}: {seen} is not the stored one"


def _at_least(acked: dict[str, str], count: int) -> Any:
    async def check() -> bool:
        return len(acked) >= count
    return check


async def _none(value: Any) -> bool:
    return await value == 0


async def _delivered(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM deliveries WHERE state = 'DELIVERED'"))


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected


def _async(function: Any) -> Any:
    async def check() -> Any:
        return function()
    return check
