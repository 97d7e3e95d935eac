"""Soak: minutes of mixed load against a real ``jobwire serve`` process on loopback (``make soak``).

The load: single Enqueues and EnqueueBatches of the kinds in tests/reliability/soak_kinds.py (some
delayed, some with a webhook to a local receiver that refuses 5 % of deliveries), CancelJob on slow and
delayed jobs, RetryJob on failed and cancelled ones, WatchJob streams followed to their end, ListJobs and
GetQueueStats, all paced and bounded in concurrency. Retention runs with seconds-long settings, so jobs
become STALE and are deleted while the load goes on; one WatchEvents stream records every terminal,
STALE and DELETED event.

Every 10 s one line: enqueued/s and completed/s (terminal events) over the interval, errors by status
code so far, the server's RSS and open file descriptors (from /proc), webhook deliveries, STALE and
DELETED counts, watch streams finished.

The verdict, after the load stops and every job has finished:

- memory flat: the median RSS of the last third of the run is at most RSS_TOLERANCE above the median of
  the middle third (the first third is warm-up), and open fds at most FD_SLACK above;
- no unexpected error: every failed call ended with a status its operation can legitimately get
  (e.g. NOT_FOUND for a job retention deleted, FAILED_PRECONDITION for a cancel that came too late),
  never INTERNAL or UNKNOWN; no traceback in the server's log; the server exits 0 on SIGTERM;
- every acknowledged job accounted for: finished (SUCCEEDED, FAILED, CANCELLED), STALE, or deleted
  with its DELETED event seen; every WatchJob stream ended on a finished job with rising sequences;
  every webhook received names an acknowledged job.

Exit status 0 when the verdict passes, 1 when it fails.

    python -m tests.reliability.soak --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from aiohttp import web
from google.protobuf import duration_pb2
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import REPO, free_port, wait_serving

T = TypeVar("T")
Code = grpc.StatusCode

REPORT_EVERY = 10.0
SAMPLE_EVERY = 2.0
#: The last third's median RSS may be at most this much above the middle third's.
RSS_TOLERANCE = 0.10
FD_SLACK = 16
CALL_TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0
WATCHERS = 12
BATCH_SIZE = 20
WEBHOOK_REFUSE = 0.05
QUEUE = "soak"

FINISHED_STATES = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED, pb.JOB_STATE_STALE}
TERMINAL_EVENTS = {pb.EVENT_TYPE_SUCCEEDED, pb.EVENT_TYPE_FAILED, pb.EVENT_TYPE_CANCELLED}
FOLLOWED_EVENTS = [*TERMINAL_EVENTS, pb.EVENT_TYPE_STALE, pb.EVENT_TYPE_DELETED]

#: Statuses each operation can get from a healthy server under this load; anything else is unexpected.
EXPECTED: dict[str, set[Code]] = {
    "Enqueue": set(),
    "EnqueueBatch": set(),
    "CancelJob": {Code.FAILED_PRECONDITION, Code.NOT_FOUND},  # finished or deleted meanwhile
    "RetryJob": {Code.FAILED_PRECONDITION, Code.NOT_FOUND},  # retried again already, or deleted
    "WatchJob": {Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED},  # deleted; a slow reader is resumed
    "GetJob": {Code.NOT_FOUND},
    "ListJobs": set(),
    "GetQueueStats": set(),
    "WatchEvents": {Code.RESOURCE_EXHAUSTED},  # a slow reader: reopened, the gap reported
}

SERVER_FLAGS = {
    "handlers": "tests.reliability.soak_kinds",
    "concurrency": "64",
    "webhook-allow": "127.0.0.1/32",
    "webhook-timeout": "2s",
    "webhook-retry-schedule": "0.2s,0.5s,1s",
    "stale-after": "10s",
    "delete-after": "10s",
    "retention-interval": "2s",
}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    at: float
    rss: int
    fds: int


@dataclass
class Tally:
    """Everything counted during the run."""

    enqueued: int = 0
    completed: int = 0
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    errors_by_op: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected_samples: list[str] = field(default_factory=list)
    webhooks: int = 0
    webhooks_refused: int = 0
    webhooks_after_refusal: int = 0
    webhook_repeats: int = 0
    webhook_strangers: int = 0
    stale: int = 0
    watches: int = 0
    watch_events: int = 0
    watch_resumes: int = 0
    watch_anomalies: list[str] = field(default_factory=list)
    events_gaps: int = 0

    def failed(self, op: str, error: grpc.aio.AioRpcError) -> None:
        code = error.code()
        self.errors[code.name] += 1
        self.errors_by_op[f"{op}:{code.name}"] += 1
        if code not in EXPECTED[op]:
            self.unexpected[f"{op}:{code.name}"] += 1
            if len(self.unexpected_samples) < 10:
                self.unexpected_samples.append(f"{op}: {code.name} {error.details()}")


class Hooks:
    """The webhook receiver: counts deliveries, refuses a few (503) so that retries happen too."""

    def __init__(self, tally: Tally, rng: random.Random) -> None:
        self.tally = tally
        self.rng = rng
        self.ids: set[str] = set()
        self.refused: set[str] = set()
        self.jobs: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        hook_id = request.headers.get("webhook-id", "")
        if self.rng.random() < WEBHOOK_REFUSE:
            self.tally.webhooks_refused += 1
            self.refused.add(hook_id)
            return web.Response(status=503, text="try again")
        self.tally.webhooks += 1
        self.tally.webhook_repeats += hook_id in self.ids
        self.tally.webhooks_after_refusal += hook_id in self.refused
        self.ids.add(hook_id)
        self.jobs.add(str(json.loads(body)["data"]["jobId"]))
        return web.Response(text="ok")


class Server:
    """``jobwire serve`` as a subprocess on a free loopback port, with the soak's settings."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.target = f"127.0.0.1:{free_port()}"
        self.log_path = folder / "server.log"
        command = Path(sys.executable).with_name("jobwire")
        args = [str(command), "serve", "--listen", self.target, "--db", str(folder / "soak.db")]
        for name, value in SERVER_FLAGS.items():
            args += [f"--{name}", value]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
        wait_serving(self.target, self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


class Soak:
    def __init__(self, server: Server, hooks: Hooks, tally: Tally, seconds: float, rate: float, seed: int) -> None:
        self.server = server
        self.hooks = hooks
        self.tally = tally
        self.seconds = seconds
        self.rate = rate
        self.rng = random.Random(seed)
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.channel = grpc.aio.insecure_channel(server.target)
        self.stub = jobwire_pb2_grpc.JobServiceStub(self.channel)
        self.acked: set[str] = set()
        self.deleted: set[str] = set()
        self.deleted_changed = asyncio.Condition()
        self.cancellable: collections.deque[str] = collections.deque(maxlen=500)
        self.retryable: collections.deque[str] = collections.deque(maxlen=100)
        self.recent: collections.deque[str] = collections.deque(maxlen=20)
        self.probes: set[str] = set()
        self.live = asyncio.Event()
        self.unaccounted: list[str] = []
        self.samples: list[Sample] = []

    # ------------------------------------------------------------------ plumbing

    async def call(self, op: str, request: Awaitable[T]) -> T | None:
        self.tally.calls[op] += 1
        try:
            return await request
        except grpc.aio.AioRpcError as error:
            self.tally.failed(op, error)
            return None

    async def every(self, period: float, concurrency: int, action: Callable[[], Awaitable[None]]) -> None:
        """Start `action` every `period` seconds until the deadline, at most `concurrency` at once (so a
        slow server lowers the rate instead of piling up calls); then wait for the last ones."""
        gate = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one() -> None:
            try:
                await action()
            finally:
                gate.release()

        tick = time.monotonic()
        while tick < self.deadline:
            await gate.acquire()
            task = asyncio.create_task(one())
            running.add(task)
            task.add_done_callback(running.discard)
            tick += period
            await asyncio.sleep(max(0.0, tick - time.monotonic()))  # sleep-ok: pacing the load
        await asyncio.gather(*running)

    def acknowledged(self, job: pb.Job, cancellable: bool) -> None:
        self.tally.enqueued += 1
        self.acked.add(job.id)
        self.recent.append(job.id)
        if cancellable:
            self.cancellable.append(job.id)

    # ------------------------------------------------------------------ the load

    def request(self) -> tuple[pb.EnqueueRequest, bool]:
        """A random EnqueueRequest, and whether it is worth cancelling (slow or delayed)."""
        draw = self.rng.random()
        kind, delay = "soak.quick", 0.0
        if draw < 0.10:
            kind = "soak.flaky"
        elif draw < 0.20:
            kind = "soak.doomed"
        elif draw < 0.30:
            kind = "soak.slow"
        elif draw < 0.40:
            delay = self.rng.uniform(0.5, 3.0)
        request = pb.EnqueueRequest(kind=kind, queue=QUEUE, payload=b'{"n": 1}', request_id=str(uuid.uuid4()),
                                    labels={"soak": "1"})
        if delay:
            request.delay.CopyFrom(duration_pb2.Duration(seconds=int(delay), nanos=int(delay % 1 * 1e9)))
        if self.rng.random() < 0.3:
            request.webhook.url = self.hooks.url
        return request, kind == "soak.slow" or delay > 0

    async def enqueue_one(self) -> None:
        request, cancellable = self.request()
        reply = await self.call("Enqueue", self.stub.Enqueue(request, timeout=CALL_TIMEOUT))
        if reply is not None:
            self.acknowledged(reply.job, cancellable)

    async def enqueue_batch(self) -> None:
        made = [self.request() for _ in range(BATCH_SIZE)]
        batch = pb.EnqueueBatchRequest(requests=[request for request, _ in made])
        reply = await self.call("EnqueueBatch", self.stub.EnqueueBatch(batch, timeout=CALL_TIMEOUT))
        if reply is not None:
            for response, (_, cancellable) in zip(reply.responses, made, strict=True):
                self.acknowledged(response.job, cancellable)

    async def cancel_one(self) -> None:
        if self.cancellable:
            job_id = self.cancellable.pop()
            await self.call("CancelJob", self.stub.CancelJob(pb.CancelJobRequest(id=job_id, reason="soak"),
                                                             timeout=CALL_TIMEOUT))

    async def retry_one(self) -> None:
        if self.retryable:
            job_id = self.retryable.pop()  # the newest: older ones may be deleted already
            request = pb.RetryJobRequest(id=job_id, from_start=self.rng.random() < 0.3)
            await self.call("RetryJob", self.stub.RetryJob(request, timeout=CALL_TIMEOUT))

    async def read_some(self) -> None:
        await self.call("ListJobs", self.stub.ListJobs(pb.ListJobsRequest(queue=QUEUE, page_size=50),
                                                       timeout=CALL_TIMEOUT))
        await self.call("GetQueueStats", self.stub.GetQueueStats(pb.GetQueueStatsRequest(queue=QUEUE),
                                                                 timeout=CALL_TIMEOUT))

    async def watcher(self) -> None:
        """Follow recently made jobs to their end, one stream after another, until the deadline."""
        while time.monotonic() < self.deadline:
            if not self.recent:
                await asyncio.sleep(0.1)  # sleep-ok: no job made yet to watch
                continue
            await self.watch_to_end(self.rng.choice(self.recent))  # one of the 20 newest

    async def watch_to_end(self, job_id: str) -> pb.Job | None:
        """One job's events until its stream ends; resumes a stream cut for a slow reader. Returns the
        job as the last event showed it (None when the stream failed)."""
        last, previous, job = 0, 0, None
        for _ in range(5):
            call = self.stub.WatchJob(pb.WatchJobRequest(id=job_id, after_sequence=last), timeout=STREAM_TIMEOUT)
            self.tally.calls["WatchJob"] += 1
            try:
                async for event in call:
                    self.tally.watch_events += 1
                    if event.sequence <= previous and event.type != pb.EVENT_TYPE_SNAPSHOT:
                        self.tally.watch_anomalies.append(f"{job_id}: sequence {event.sequence} after {previous}")
                    previous = max(previous, event.sequence)
                    last = previous
                    job = event.job
            except grpc.aio.AioRpcError as error:
                self.tally.failed("WatchJob", error)
                if error.code() == Code.RESOURCE_EXHAUSTED:
                    self.tally.watch_resumes += 1
                    continue
                return None
            self.tally.watches += 1
            if job is None or job.state not in FINISHED_STATES:
                self.tally.watch_anomalies.append(f"{job_id}: stream ended with the job {job and job.state}")
            return job
        return None

    # ------------------------------------------------------------------ what happened

    async def follow_events(self) -> None:
        """One WatchEvents stream for terminal, STALE and DELETED events, reopened if the server ends it
        (each reopening is a gap: a job deleted meanwhile would be unaccounted for). A stream is known to
        be live once the SUCCEEDED event of a probe job enqueued after it opened arrives."""
        request = pb.WatchEventsRequest(types=FOLLOWED_EVENTS)
        for _ in range(20):
            prober = asyncio.create_task(self.probe(self.live))
            try:
                async for event in self.stub.WatchEvents(request):
                    await self.observed(event)
            except grpc.aio.AioRpcError as error:
                self.tally.failed("WatchEvents", error)
            finally:
                prober.cancel()
            self.tally.events_gaps += 1
            self.live = asyncio.Event()

    async def probe(self, live: asyncio.Event) -> None:
        """Enqueue a `noop` every half second until the events stream shows one finishing (at most 40)."""
        for _ in range(40):
            reply = await self.call("Enqueue", self.stub.Enqueue(pb.EnqueueRequest(kind="noop", queue="soak-probe"),
                                                                 timeout=CALL_TIMEOUT))
            if reply is not None:
                self.probes.add(reply.job.id)
            try:
                async with asyncio.timeout(0.5):
                    await live.wait()
                return
            except TimeoutError:
                continue

    async def observed(self, event: pb.JobEvent) -> None:
        if event.job_id in self.probes:
            self.live.set()
            return
        if event.type in TERMINAL_EVENTS:
            self.tally.completed += 1
            if event.type in (pb.EVENT_TYPE_FAILED, pb.EVENT_TYPE_CANCELLED) and self.rng.random() < 0.5:
                self.retryable.append(event.job_id)
        elif event.type == pb.EVENT_TYPE_STALE:
            self.tally.stale += 1
        elif event.type == pb.EVENT_TYPE_DELETED:
            async with self.deleted_changed:
                self.deleted.add(event.job_id)
                self.deleted_changed.notify_all()

    async def sample(self) -> None:
        pid = self.server.process.pid
        while time.monotonic() < self.deadline:
            self.samples.append(Sample(time.monotonic() - self.start, rss_bytes(pid), open_fds(pid)))
            await asyncio.sleep(SAMPLE_EVERY)  # sleep-ok: the sampling period

    async def report(self) -> None:
        before = (0, 0, 0)
        tick = time.monotonic()
        while tick + REPORT_EVERY <= self.deadline + 0.5:
            tick += REPORT_EVERY
            await asyncio.sleep(max(0.0, tick - time.monotonic()))  # sleep-ok: the reporting period
            now = (self.tally.enqueued, self.tally.completed, self.tally.webhooks)
            pid = self.server.process.pid
            errors = " ".join(f"{k}={v}" for k, v in sorted(self.tally.errors.items())) or "none"
            print(f"[{tick - self.start:4.0f}s] enqueued {(now[0] - before[0]) / REPORT_EVERY:6.1f}/s  "
                  f"completed {(now[1] - before[1]) / REPORT_EVERY:6.1f}/s | errors {errors} | "
                  f"rss {rss_bytes(pid) / 2**20:6.1f} MiB  fds {open_fds(pid):3d} | "
                  f"webhooks {now[2]:6d} (+{now[2] - before[2]}) | stale {self.tally.stale:6d}  "
                  f"deleted {len(self.deleted):6d} | watches {self.tally.watches:5d}", flush=True)
            before = now

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        events = asyncio.create_task(self.follow_events())
        async with asyncio.timeout(30):
            await self.live.wait()
        self.start = time.monotonic()
        self.deadline = self.start + self.seconds
        await asyncio.gather(
            self.every(1 / self.rate, 16, self.enqueue_one),
            self.every(1.0, 2, self.enqueue_batch),
            self.every(0.25, 4, self.cancel_one),
            self.every(0.25, 4, self.retry_one),
            self.every(1.0, 2, self.read_some),
            *(self.watcher() for _ in range(WATCHERS)),
            self.sample(),
            self.report(),
        )
        self.unaccounted = await self.account()
        events.cancel()
        await self.channel.close()

    async def account(self) -> list[str]:
        """Every acknowledged job, once the load has stopped: finished or STALE (watched to its end when
        still active), or deleted with its DELETED event seen. Returns the ones that are neither."""
        gate = asyncio.Semaphore(32)
        missing: list[str] = []

        async def check(job_id: str) -> None:
            async with gate:
                for _ in range(3):
                    job = await self.call("GetJob", self.stub.GetJob(pb.GetJobRequest(id=job_id),
                                                                     timeout=CALL_TIMEOUT))
                    if job is None:
                        if await self.deletion_seen(job_id):
                            return
                        break
                    if job.state in FINISHED_STATES:
                        return
                    await self.watch_to_end(job_id)  # still active: until it ends (or is deleted)
                missing.append(job_id)

        await asyncio.gather(*(check(job_id) for job_id in self.acked - self.deleted))
        return missing

    async def deletion_seen(self, job_id: str, within: float = 15.0) -> bool:
        """Whether the DELETED event of a job that GetJob no longer finds arrives (it may trail the delete)."""
        try:
            async with asyncio.timeout(within), self.deleted_changed:
                await self.deleted_changed.wait_for(lambda: job_id in self.deleted)
            return True
        except TimeoutError:
            return False


def memory_verdict(samples: list[Sample], seconds: float) -> list[str]:
    """Memory flat after warm-up: the last third against the middle third (the first is warm-up)."""
    middle = [s for s in samples if seconds / 3 <= s.at < 2 * seconds / 3]
    last = [s for s in samples if s.at >= 2 * seconds / 3]
    if len(middle) < 2 or len(last) < 2:
        return ["too few memory samples to judge (run at least a minute)"]
    mib, failures = 2**20, []
    rss_middle = statistics.median(s.rss for s in middle)
    rss_last = statistics.median(s.rss for s in last)
    fds_middle, fds_last = max(s.fds for s in middle), max(s.fds for s in last)
    growth = rss_last / rss_middle - 1
    print(f"memory: median RSS {rss_middle / mib:.1f} MiB (middle third) → {rss_last / mib:.1f} MiB "
          f"(last third), {growth:+.1%} (tolerance +{RSS_TOLERANCE:.0%}); peak "
          f"{max(s.rss for s in samples) / mib:.1f} MiB; max fds {fds_middle} → {fds_last} (tolerance +{FD_SLACK})")
    if growth > RSS_TOLERANCE:
        failures.append(f"RSS grew {growth:+.1%} from the middle third to the last")
    if fds_last > fds_middle + FD_SLACK:
        failures.append(f"open fds grew from {fds_middle} to {fds_last}")
    return failures


def verdict(soak: Soak, exit_code: int, log: str) -> list[str]:
    """The reasons the soak failed (empty: it passed); prints the figures behind them."""
    tally = soak.tally
    failures = memory_verdict(soak.samples, soak.seconds)
    calls = sum(tally.calls.values())
    print(f"calls: {calls} ({', '.join(f'{k} {v}' for k, v in sorted(tally.calls.items()))})")
    print(f"errors by call and status: {dict(tally.errors_by_op) or 'none'}; "
          f"unexpected: {dict(tally.unexpected) or 'none'}")
    for line in tally.unexpected_samples:
        print(f"  {line}")
    if tally.unexpected:
        failures.append(f"unexpected errors: {dict(tally.unexpected)}")
    if "Traceback" in log:
        failures.append("the server logged a traceback")
    if exit_code != 0:
        failures.append(f"the server exited {exit_code} after SIGTERM")
    print(f"jobs: {len(soak.acked)} acknowledged, {tally.completed} terminal events, {tally.stale} STALE, "
          f"{len(soak.deleted & soak.acked)} deleted; unaccounted {len(soak.unaccounted)}; "
          f"events stream gaps {tally.events_gaps}")
    if soak.unaccounted:
        failures.append(f"{len(soak.unaccounted)} acknowledged jobs unaccounted for, e.g. {soak.unaccounted[:3]}")
    if not soak.deleted & soak.acked:
        failures.append("retention deleted no job during the run")
    print(f"watches: {tally.watches} streams to the end, {tally.watch_events} events, {tally.watch_resumes} resumed, "
          f"{len(tally.watch_anomalies)} anomalies")
    if tally.watch_anomalies:
        failures.append(f"watch anomalies: {tally.watch_anomalies[:3]}")
    strangers = soak.hooks.jobs - soak.acked
    print(f"webhooks: {tally.webhooks} delivered for {len(soak.hooks.jobs)} jobs ({tally.webhook_repeats} repeats of "
          f"a webhook-id); {tally.webhooks_refused} refused with 503 on purpose, {tally.webhooks_after_refusal} of "
          "them delivered on a later attempt with the same webhook-id")
    if tally.webhooks == 0:
        failures.append("no webhook was delivered")
    if strangers:
        failures.append(f"webhooks for jobs never acknowledged: {sorted(strangers)[:3]}")
    return failures


async def soak(minutes: float, rate: float, seed: int, folder: Path) -> bool:
    tally = Tally()
    hooks = Hooks(tally, random.Random(seed + 1))
    await hooks.start()
    server = Server(folder)
    print(f"soak: {minutes:g} min against {server.target} (pid {server.process.pid}), {rate:g} enqueues/s + "
          f"{BATCH_SIZE}-job batches/s, {WATCHERS} watchers; retention stale/delete after "
          f"{SERVER_FLAGS['stale-after']}/{SERVER_FLAGS['delete-after']}; data in {folder}", flush=True)
    runner = Soak(server, hooks, tally, minutes * 60, rate, seed)
    try:
        await runner.run()
    finally:
        exit_code = await asyncio.to_thread(server.stop)
        await hooks.stop()
    failures = verdict(runner, exit_code, server.log())
    print("VERDICT: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)), flush=True)
    return not failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")),
                        help="how long the load runs (env SOAK_MINUTES; default 10)")
    parser.add_argument("--rate", type=float, default=40.0, help="single Enqueues per second (default 40)")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--keep", action="store_true", help="keep the database and server log afterwards")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    folder = Path(tempfile.mkdtemp(prefix="jobwire-soak-"))
    passed = asyncio.run(soak(args.minutes, args.rate, args.seed, folder))
    if passed and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    elif not passed:
        print(f"database and server log kept in {folder}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
