"""Replicas (`--store postgres` only): two `jobwire serve` processes on one database drain a
prefilled queue together, against one doing it alone, measured the same way in the same run.

Each replica is a real process (`jobwire serve`, bench/common.py `Replica`), so each has its own
event loop and GIL; on a 2-core machine they share the cores with PostgreSQL (and with each other),
so the ratio says how well the work splits, not what more machines would give.

Each round copies the prefilled template database (`drain_jobs` QUEUED noop jobs, see
`drain.prefill_postgres`), launches the replicas at once and waits for them to serve. Completion
is read through the API, so it costs the replicas nothing per job: GetQueueStats on the first
replica every POLL seconds until every job has SUCCEEDED (any FAILED ends the round). Then the
jobs themselves, read with ListJobs once the drain is over, give the rate while every replica
serves: the jobs that started (`start_time`) after the last replica logged that it serves,
divided by the time from that moment to the last `finish_time`. Replicas launched together still
become ready some 0.1-0.2 s apart on two busy cores, and the first drains alone meanwhile; that
part is left out of both counts, one replica and two alike. The rate over the whole drain (first
claim to last completion, every job) is kept in the JSON too. Rounds alternate which count goes
first; medians.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc import aio
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc

from bench.common import Failed, Figure, Replica, Run, Target, bounded, median
from bench.drain import prefill_postgres

#: Two replicas against one, same jobs, same database server, same run.
REPLICAS_SHARE = 1.5
#: Seconds between two GetQueueStats reads while a drain runs (the window comes from the jobs).
POLL = 0.2
PAGE = 1000


def _seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


async def _times(stub: jobwire_pb2_grpc.JobServiceStub, jobs: int) -> tuple[list[float], float]:
    """(every start_time, the latest finish_time) of the SUCCEEDED jobs, epoch seconds."""
    starts: list[float] = []
    last, token = 0.0, ""
    while True:
        page = await stub.ListJobs(jobwire_pb2.ListJobsRequest(
            queue="default", states=[jobwire_pb2.JOB_STATE_SUCCEEDED], page_size=PAGE, page_token=token), timeout=60)
        for job in page.jobs:
            starts.append(_seconds(job.start_time))
            last = max(last, _seconds(job.finish_time))
        token = page.next_page_token
        if not token:
            break
    if len(starts) != jobs:
        raise Failed(f"ListJobs returned {len(starts)} of {jobs} SUCCEEDED jobs")
    return starts, last


async def _wait_done(stub: jobwire_pb2_grpc.JobServiceStub, jobs: int) -> int:
    """Poll GetQueueStats until `jobs` jobs have SUCCEEDED; the number of polls."""
    polls = 0
    while True:
        polls += 1
        reply = await stub.GetQueueStats(jobwire_pb2.GetQueueStatsRequest(queue="default"), timeout=30)
        stats = reply.queues[0] if reply.queues else jobwire_pb2.QueueStats()
        if stats.failed or stats.cancelled:
            raise Failed(f"{stats.failed} jobs FAILED and {stats.cancelled} CANCELLED during the drain")
        if stats.succeeded >= jobs:
            return polls
        await asyncio.sleep(POLL)


async def _drain(run: Run, template: str, count: int) -> dict[str, Any]:
    s = run.settings
    db = await run.db(f"replicas-{count}", template=template)
    replicas = [Replica(s, db, name=f"replica {'AB'[i] if count == 2 else i + 1}") for i in range(count)]
    try:
        started = await asyncio.gather(*(r.start() for r in replicas), return_exceptions=True)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        async with aio.insecure_channel(replicas[0].target) as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            polls = await bounded(_wait_done(stub, s.drain_jobs), 60 + s.drain_jobs / 200,
                                  f"drain by {count} replica(s)")
            starts, last = await _times(stub, s.drain_jobs)
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
    all_ready = max(r.ready_wall for r in replicas)
    counted = sum(1 for start in starts if start >= all_ready)
    if not counted:
        raise Failed(f"every job started before all {count} replicas were serving")
    return {"rate": counted / (last - all_ready), "jobs_counted": counted, "seconds": last - all_ready,
            "whole_drain_rate": s.drain_jobs / (last - min(starts)), "polls": polls,
            "ready_skew_s": round(max(r.ready_at for r in replicas) - min(r.ready_at for r in replicas), 4),
            "warnings": [w for r in replicas for w in r.warnings][:20]}


async def measure(run: Run) -> None:
    s = run.settings
    if not s.postgres:
        raise Failed("replicas needs --store postgres (two servers on one database)")
    template = await prefill_postgres(run, s.drain_jobs)
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for number in range(s.replica_rounds):
        for count in (1, 2) if number % 2 == 0 else (2, 1):
            results[count].append(await _drain(run, template, count))
    one = median([r["rate"] for r in results[1]])
    two = median([r["rate"] for r in results[2]])
    note = f"median of {s.replica_rounds}" if s.replica_rounds > 1 else ""
    run.add(Figure(
        "replicas_1", "  one replica (jobwire serve), prefilled drain", "jobs/s", one, note=note,
        extra={"rounds": [round(r["rate"]) for r in results[1]], "detail": results[1]}))
    run.add(Figure(
        "replicas_2", f"Two replicas drain {s.drain_jobs:,} prefilled jobs", "jobs/s", two, one,
        "one replica, same way", (Target(REPLICAS_SHARE, of_floor=True),),
        note=f"all serving → last finish; {note}".rstrip("; "),
        extra={"rounds": [round(r["rate"]) for r in results[2]], "detail": results[2]}))
