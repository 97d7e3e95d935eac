"""Crash loop: a real server with a handler module that logs its effects to a file, killed with
SIGKILL at random moments (while enqueues are in flight, phases run and webhooks are sent) and
restarted on the same database, several times. Judged against the effects log, not the service:

- every enqueue (each with its own request_id, re-sent after a crash until acknowledged) made
  exactly one job, and every job SUCCEEDED;
- each job's three phases ran at least once, and again only in a later process (after a kill);
  attempts never went backwards in the log;
- every job's SUCCEEDED webhook arrived at least once, always with one stable webhook-id;
- the last event a WatchJob stream gives for each job equals its stored state.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import ServerProcess, StartServer
from tests.receiver import Receiver
from tests.testkit import finished

pytestmark = pytest.mark.timeout(180)

KILLS = 4
JOBS_PER_ROUND = 80
PHASES = ("fetch", "transform", "store")
SEED = 1129


def serve(start_server: StartServer, db: Path | None, effects: Path) -> ServerProcess:
    return start_server(db=db, env={"JOBWIRE_EFFECTS_LOG": str(effects)}, handlers="tests.reliability.effects",
                        lease_ttl=2, concurrency=16, webhook_allow="127.0.0.1/32", webhook_timeout="2s",
                        webhook_retry_schedule=",".join(["0.2s"] * 20))


async def enqueue_all(target: str, requests: dict[str, pb.EnqueueRequest], acked: dict[str, str]) -> None:
    """Send every request not acknowledged yet (10 at a time) until each is or the server dies."""
    gate = asyncio.Semaphore(10)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = jobwire_pb2_grpc.JobServiceStub(channel)

        async def one(request_id: str, request: pb.EnqueueRequest) -> None:
            async with gate:
                try:
                    acked[request_id] = (await stub.Enqueue(request, timeout=10)).job.id
                except grpc.aio.AioRpcError as error:
                    assert error.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, error

        await asyncio.gather(*(one(rid, r) for rid, r in requests.items() if rid not in acked))


async def test_sigkill_loop_loses_nothing(start_server: StartServer, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    effects = tmp_path / "effects.log"
    requests: dict[str, pb.EnqueueRequest] = {}
    acked: dict[str, str] = {}
    db: Path | None = None
    async with Receiver() as receiver:
        url = receiver.url("/crash")
        for _ in range(KILLS):
            server = serve(start_server, db, effects)
            db = server.db_path
            for _ in range(JOBS_PER_ROUND):
                request_id = str(uuid.uuid4())
                requests[request_id] = pb.EnqueueRequest(kind="rel.effects", request_id=request_id,
                                                         webhook=pb.WebhookConfig(url=url))
            sender = asyncio.create_task(enqueue_all(server.target, requests, acked))
            # The kill's moment is the scenario: somewhere in enqueues, phases and deliveries.
            await asyncio.sleep(rng.uniform(0.1, 0.8))  # sleep-ok: a random moment to kill at
            server.stop(signal.SIGKILL, timeout=10)
            await sender

        server = serve(start_server, db, effects)
        await enqueue_all(server.target, requests, acked)  # the same request_ids: no new jobs
        assert set(acked) == set(requests)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = jobwire_pb2_grpc.JobServiceStub(channel)
            last_events = {job_id: await finished(stub, job_id, within=60) for job_id in set(acked.values())}
            stored = {job_id: await stub.GetJob(pb.GetJobRequest(id=job_id), timeout=10) for job_id in last_events}
            listed = await stub.ListJobs(pb.ListJobsRequest(kind="rel.effects", page_size=1000), timeout=10)
        job_ids = set(last_events)
        delivered = await receiver.wait_until(lambda got: job_ids <= {r.json()["data"]["jobId"] for r in got},
                                              within=60)

    lines = [json.loads(line) for line in effects.read_text().splitlines()]
    ran: dict[str, set[str]] = defaultdict(set)
    attempts: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        ran[line["job"]].add(line["phase"])
        attempts[line["job"]].append(line["attempt"])
    runs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for line in lines:
        runs[line["job"], line["phase"]].append(line["pid"])
    hook_ids: dict[str, set[str]] = defaultdict(set)
    for request in delivered:
        hook_ids[request.json()["data"]["jobId"]].add(request.headers["webhook-id"])
    extra_runs = len(lines) - len(PHASES) * len(job_ids)
    print(f"\ncrash loop: {KILLS} SIGKILLs, {len(requests)} enqueues, {len(job_ids)} jobs, "
          f"{len(lines)} phase effects ({extra_runs} re-run after a kill), "
          f"{len(delivered)} webhooks for {len(hook_ids)} jobs, max attempt {max(max(a) for a in attempts.values())}")

    assert len(job_ids) == len(requests), "one job per request_id"
    assert {j.id for j in listed.jobs} == job_ids, "no job missing or extra"
    assert all(job.state == pb.JOB_STATE_SUCCEEDED for job in stored.values())
    assert all(last_events[i].job.state == stored[i].state for i in job_ids), "the stream's end is the stored state"
    assert all(ran[i] == set(PHASES) for i in job_ids), "every phase's effect happened"
    assert all(a == sorted(a) for a in attempts.values()), "attempt never went backwards"
    assert all(len(set(pids)) == len(pids) for pids in runs.values()), "a phase ran again only after a kill"
    assert all(len(ids) == 1 for ids in hook_ids.values()), "one stable webhook-id per delivery"
    assert set(hook_ids) == job_ids
