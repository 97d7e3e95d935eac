"""The remote worker: runs the phases of its kinds for a jobwire server over one
`WorkerService.Connect` stream per session.

    worker = Worker("jobs.internal:50051", [thumbnail], slots=8, token=...)
    await worker.run()          # until worker.shutdown() (SIGTERM in `jobwire worker`)

Slots are an explicit budget: the hello declares them, each assignment spends one, and every
assignment ends with one closing report (the last phase done, or `released`) whose final ack gives
the slot back. A job the server takes back (abandoned after a cancel, fenced, dropped at a reconnect)
is still closed that way once its handler has returned, so a handler that ignores a cancel keeps its
slot until it returns. Jobs outlive a dropped stream: the worker reconnects with jittered backoff,
names the jobs it still runs in its hello, and resends the report that was waiting for an ack; the
server says which jobs it keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from jobwire import __version__
from jobwire.client import TLSConfig
from jobwire.v1 import worker_pb2, worker_pb2_grpc
from jobwire.worker import protocol
from jobwire.worker.errors import PermanentError
from jobwire.worker.kind import JobContext, Kind, PhaseFunction
from jobwire.worker.loading import kinds_in_module

log = logging.getLogger("jobwire.worker")

SDK_NAME = "jobwire-python"
OK, FENCED, CANCELLED, REJECTED = (worker_pb2.ACK_STATUS_OK, worker_pb2.ACK_STATUS_FENCED,
                                   worker_pb2.ACK_STATUS_CANCELLED, worker_pb2.ACK_STATUS_REJECTED)
#: Statuses that mean retrying the same hello cannot help.
_REFUSALS = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                       grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                       grpc.StatusCode.UNIMPLEMENTED})
#: Seconds a cancelled handler gets to return once the drain's budget is spent.
RELEASE_GRACE = 5.0
#: A phase still running after this many seconds sends `started`; one that ends sooner needs none
#: (its phase done acknowledges the hand-off), which saves a message per short job.
STARTED_AFTER = 0.05
#: Messages sent as one batch at most.
MAX_BATCH = 256
#: Ping intervals without a word from the server before the worker reconnects.
MISSED_PINGS = 3
#: Jobs a worker runs at once unless told: as many as the server's in-process pool (`--concurrency`).
#: Slots are the worker's pipeline depth: each job's commit and round trip overlap the others'.
DEFAULT_SLOTS = 100


class WorkerRefused(Exception):
    """The server refused this worker for good (a changed kind, a bad token or hello): reconnecting
    cannot help. `reason` is the ErrorInfo reason when the server sent one (e.g. KIND_MISMATCH)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(f"{code.name} ({reason}): {message}" if reason else f"{code.name}: {message}")
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: doubling from `initial` up to `maximum`, each drawn in [d/2, d] (jitter,
    so workers that lost one server do not come back all at once)."""

    initial: float = 0.1
    maximum: float = 5.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** min(failures, 30))
        return random.uniform(ceiling / 2, ceiling)


class Heard:
    """When the server was last heard from on a session (a pong at least every ping interval)."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        #: Set when the session was given up on for silence.
        self.lost = False

    def now(self) -> None:
        self.at = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.at


class _Job:
    """One assignment this worker runs: its phases in turn, as the server's acks name them."""

    def __init__(self, assign: worker_pb2.JobAssignment) -> None:
        self.assign = assign
        self.id, self.attempt, self.phase = assign.job_id, assign.attempt, assign.phase
        self.results = {done.name: done.result for done in assign.done}
        self.handler: asyncio.Future[bytes] | None = None
        self.runner: asyncio.Task[None] | None = None
        #: The report waiting for its ack (resent after a reconnect), and the ack's future.
        self.unacked: worker_pb2.ConnectRequest | None = None
        self.ack: asyncio.Future[worker_pb2.WorkerAck | None] | None = None
        self.cancel_reason: str | None = None
        #: The attempt is not ours any more: stop, report nothing.
        self.fenced = False
        #: Drain ran out of time: give the job back instead of reporting the stopped phase.
        self.releasing = False
        #: A report went out (so `started` is not needed any more).
        self.reported = False
        #: Its final ack came: the slot is free (the runner may still be returning).
        self.closed = False

    def stop_handler(self) -> None:
        if self.handler is not None and not self.handler.done():
            self.handler.cancel()

    def answer(self, ack: worker_pb2.WorkerAck | None) -> None:
        if self.ack is not None and not self.ack.done():
            self.ack.set_result(ack)


class Worker:
    """Runs the phases of `kinds` for the server at `target`; see the module."""

    def __init__(self, target: str, kinds: Iterable[Kind], *, slots: int = DEFAULT_SLOTS, queues: Sequence[str] = (),
                 token: str | None = None, tls: TLSConfig | None = None, worker_id: str | None = None,
                 backoff: Backoff | None = None, drain_timeout: float = 30.0) -> None:
        self.target = target
        self._kinds = {kind.name: kind for kind in kinds}
        if not self._kinds:
            raise ValueError("a worker needs at least one kind")
        if not 1 <= slots <= 1024:
            raise ValueError("slots must be within 1-1024")
        self.slots = slots
        self.queues = tuple(queues)
        self._token = token
        self._tls = tls
        self.worker_id = worker_id or f"{socket.gethostname()[:100]}:{os.getpid()}"
        self._backoff = backoff or Backoff()
        self._drain_timeout = drain_timeout
        self._jobs: dict[str, _Job] = {}
        #: Runners alive (abandoned handlers included): the slots in use.
        self.busy = 0
        self._outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] | None = None
        self._draining = False
        self._stopping: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None
        #: Threads for synchronous handlers, one per slot.
        self._threads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="jobwire-handler")
        self.session_id = ""
        #: Set while a session is open (after the welcome); embedders and tests may wait on it.
        self.connected = asyncio.Event()

    @classmethod
    def from_modules(cls, target: str, modules: Iterable[str], **options: Any) -> Worker:
        """A worker for every Kind defined at the top level of the handler `modules`."""
        kinds = [kind for module in modules for kind in kinds_in_module(module)]
        return cls(target, kinds, **options)

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Connect, run jobs, reconnect when the stream drops; return once `shutdown()` has drained.
        Raises WorkerRefused when the server refuses the hello for good."""
        self._stopping = asyncio.Event()
        try:
            await self._connect_until_stopped()
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)  # an abandoned handler's thread is left

    async def _connect_until_stopped(self) -> None:
        assert self._stopping is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                if await self._session():
                    failures = 0
            except WorkerRefused:
                raise
            except aio.AioRpcError as exc:
                log.warning("worker %s: connection to %s lost (%s: %s); reconnecting", self.worker_id, self.target,
                            exc.code().name, exc.details())
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff.delay(failures))
            failures += 1

    def shutdown(self) -> None:
        """Drain: take no new jobs, let running ones finish for `drain_timeout` seconds, give the
        rest back (their attempt not spent), then end `run()`. Safe to call more than once."""
        if self._drain_task is None:
            self._draining = True
            self._send(worker_pb2.ConnectRequest(draining=worker_pb2.WorkerDraining(reason="shutdown")))
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        runners = [job.runner for job in self._jobs.values() if job.runner is not None]
        if runners:
            await asyncio.wait(runners, timeout=self._drain_timeout)
        for job in list(self._jobs.values()):
            job.releasing = True
            job.stop_handler()
        runners = [job.runner for job in self._jobs.values() if job.runner is not None]
        if runners:
            await asyncio.wait(runners, timeout=RELEASE_GRACE)
        if self._stopping is not None:
            self._stopping.set()
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # ends the request stream: the server closes the session

    # ------------------------------------------------------------------ one session

    async def _session(self) -> bool:
        """One Connect stream, from hello to its end; True when it was welcomed."""
        outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        outbox.put_nowait(worker_pb2.ConnectRequest(hello=self._hello()))
        welcomed = False
        async with self._channel() as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            metadata = (("authorization", f"Bearer {self._token}"),) if self._token else None
            call = stub.Connect(_requests(outbox), metadata=metadata)
            self._outbox = outbox
            pinger: asyncio.Task[None] | None = None
            heard = Heard()
            try:
                async for response in call:
                    heard.now()
                    for message in response.batch.messages if response.WhichOneof("message") == "batch" \
                            else (response,):
                        if message.WhichOneof("message") == "welcome":
                            welcomed = True
                            interval = protocol.seconds(message.welcome.ping_interval)
                            pinger = asyncio.create_task(self._ping(outbox, interval, heard, call))
                        self._on(message)
            except aio.AioRpcError as exc:
                if exc.code() in _REFUSALS:
                    raise WorkerRefused(exc.code(), exc.details() or "", _reason(exc)) from None
                raise
            except asyncio.CancelledError:
                if not heard.lost:
                    raise
                log.warning("worker %s: nothing heard from %s for %d ping intervals; reconnecting", self.worker_id,
                            self.target, MISSED_PINGS)
            finally:
                self._outbox = None
                self.connected.clear()
                if pinger is not None:
                    pinger.cancel()
                outbox.put_nowait(None)
        return welcomed

    def _channel(self) -> aio.Channel:
        options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
        if self._tls is None:
            return aio.insecure_channel(self.target, options=options)
        if self._tls.server_name:
            options.append(("grpc.ssl_target_name_override", self._tls.server_name))  # type: ignore[arg-type]
        return aio.secure_channel(self.target, self._tls.credentials(), options=options)

    def _hello(self) -> worker_pb2.WorkerHello:
        # Every job still running, the ones the server took back too: each holds a slot here.
        held = [worker_pb2.HeldJob(job_id=job.id, attempt=job.attempt, phase=job.phase)
                for job in self._jobs.values()][: self.slots]
        return worker_pb2.WorkerHello(worker_id=self.worker_id, sdk_name=SDK_NAME, sdk_version=__version__,
                                      kinds=[protocol.declare(kind) for kind in self._kinds.values()],
                                      queues=list(self.queues), slots=self.slots, held=held)

    async def _ping(self, outbox: asyncio.Queue[worker_pb2.ConnectRequest | None], interval: float, heard: Heard,
                    call: Any) -> None:
        """Ping every `interval`; a server silent for MISSED_PINGS intervals (no pong, nothing) is
        given up on: the call is cancelled and the worker reconnects."""
        nonce = 0
        while True:
            await asyncio.sleep(interval)  # sleep-ok: the protocol's liveness beat, at the server's interval
            if heard.silent_for() > interval * MISSED_PINGS:
                heard.lost = True
                call.cancel()
                return
            nonce += 1
            outbox.put_nowait(worker_pb2.ConnectRequest(ping=worker_pb2.WorkerPing(nonce=nonce)))

    def _send(self, message: worker_pb2.ConnectRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    # ------------------------------------------------------------------ what the server says

    def _on(self, response: worker_pb2.ConnectResponse) -> None:
        which = response.WhichOneof("message")
        if which == "assign":
            self._take(response.assign)
        elif which == "ack":
            self._on_ack(response.ack)
        elif which == "cancel":
            job = self._jobs.get(response.cancel.job_id)
            if job is not None and job.attempt == response.cancel.attempt:
                job.cancel_reason = response.cancel.reason
                job.stop_handler()
        elif which == "welcome":
            self._welcomed(response.welcome)
        elif which == "drain":
            log.info("worker %s: the server is draining; no new jobs on this session", self.worker_id)

    def _welcomed(self, welcome: worker_pb2.WorkerWelcome) -> None:
        self.session_id = welcome.session_id
        for job_id in welcome.drop_job_ids:
            job = self._jobs.get(job_id)
            if job is not None:
                job.fenced = True
                job.stop_handler()
        for job in self._jobs.values():
            if job.unacked is not None:
                self._send(job.unacked)  # its ack was lost with the old stream
        self.connected.set()
        log.info("worker %s: connected to %s (session %s, %d jobs kept)", self.worker_id, self.target,
                 welcome.session_id, len(welcome.keep_job_ids))

    def _take(self, assign: worker_pb2.JobAssignment) -> None:
        job = _Job(assign)
        if self._draining:
            self._send(worker_pb2.ConnectRequest(draining=worker_pb2.WorkerDraining(reason="shutdown")))
        if self._draining or assign.kind not in self._kinds or self.busy >= self.slots:
            job.releasing = True  # the runner gives it straight back
        self._jobs[job.id] = job
        self.busy += 1
        job.runner = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")

    def _on_ack(self, ack: worker_pb2.WorkerAck) -> None:
        job = self._jobs.get(ack.job_id)
        if job is None or job.attempt != ack.attempt:
            return
        if job.ack is not None and not job.ack.done():
            if ack.status in (FENCED, CANCELLED) or (ack.status == OK and not ack.next_phase):
                self._close(job)  # the slot comes back with the final ack, before what follows it
            job.answer(ack)
        elif ack.status in (FENCED, CANCELLED):  # the job was taken from this worker: stop, then close it
            job.fenced = True
            job.stop_handler()
        else:
            log.warning("job %s: report refused: %s %s", job.id, ack.reason, ack.detail)

    # ------------------------------------------------------------------ running a job

    async def _run_job(self, job: _Job) -> None:
        try:
            if job.releasing:
                await self._report(job, _released(job, "the worker cannot take it now"))
                return
            asyncio.get_running_loop().call_later(STARTED_AFTER, self._say_started, job)
            await self._phases(job)
        finally:
            self._close(job)

    def _close(self, job: _Job) -> None:
        """The job's slot is free: its final ack came (its handler has returned by then)."""
        if not job.closed:
            job.closed = True
            self.busy -= 1
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]

    def _say_started(self, job: _Job) -> None:
        if not job.reported and self._jobs.get(job.id) is job:
            self._send(worker_pb2.ConnectRequest(started=worker_pb2.PhaseStartedReport(
                job_id=job.id, attempt=job.attempt, phase=job.phase)))

    async def _phases(self, job: _Job) -> None:
        while True:
            report = await self._run_phase(job)
            ack = await self._report(job, report)
            if ack is not None and ack.status == REJECTED and ack.reason == "RESULT_TOO_LARGE":
                too_large = PermanentError(f"phase {job.phase!r}: {ack.detail}")
                report.phase_done.failure.CopyFrom(protocol.failure(too_large))
                ack = await self._report(job, report)
            if ack is not None and ack.status == REJECTED:  # a report this worker should not have sent
                log.warning("job %s: phase %s refused: %s %s; giving the job back", job.id, job.phase, ack.reason,
                            ack.detail)
                await self._report(job, _released(job, f"report refused: {ack.reason}"))
                return
            if ack is None or ack.status != OK or not ack.next_phase:
                return
            job.results[job.phase] = report.phase_done.result
            job.phase = ack.next_phase

    async def _run_phase(self, job: _Job) -> worker_pb2.ConnectRequest:
        """Run the current phase; its report (`released` when the job was taken from this worker:
        the answer to it gives the slot back)."""
        if job.fenced:
            return _released(job, "taken back by the server")
        if job.cancel_reason is not None:
            return protocol.phase_done(job.id, job.attempt, job.phase, None, cancelled=True)
        function = self._kinds[job.assign.kind].function_for(job.phase)
        if function is None:
            done = worker_pb2.PhaseDoneReport(job_id=job.id, attempt=job.attempt, phase=job.phase)
            done.failure.CopyFrom(protocol.failure(PermanentError(f"this worker has no phase {job.phase!r}")))
            return worker_pb2.ConnectRequest(phase_done=done)
        handler = asyncio.ensure_future(_call(function, self._context(job), self._threads))
        job.handler = handler
        try:
            await asyncio.wait({handler})  # a cancel reaches the handler, never this runner
        finally:
            job.handler = None
        if job.fenced:
            return _released(job, "taken back by the server")
        if job.releasing and handler.cancelled():
            return _released(job, "the worker is shutting down")
        return protocol.phase_done(job.id, job.attempt, job.phase, handler)

    async def _report(self, job: _Job, report: worker_pb2.ConnectRequest) -> worker_pb2.WorkerAck | None:
        """Send a report and wait for its ack, across reconnects (resent after each welcome)."""
        job.unacked, job.reported = report, True
        job.ack = asyncio.get_running_loop().create_future()
        self._send(report)
        try:
            return await job.ack
        finally:
            job.unacked = job.ack = None

    def _context(self, job: _Job) -> JobContext:
        async def progress(percent: float, message: str) -> None:
            if job.fenced:
                raise asyncio.CancelledError("the job is not this worker's any more")
            self._send(worker_pb2.ConnectRequest(progress=worker_pb2.ProgressReport(
                job_id=job.id, attempt=job.attempt, phase=job.phase, percent=percent, message=message)))
            job.reported = True

        assign = job.assign
        return JobContext(job_id=job.id, kind=assign.kind, queue=assign.queue, attempt=job.attempt,
                          payload=assign.payload, labels=dict(assign.labels), results=dict(job.results),
                          phase=job.phase, report=progress, loop=asyncio.get_running_loop())


async def _requests(outbox: asyncio.Queue[worker_pb2.ConnectRequest | None]) -> AsyncIterator[
        worker_pb2.ConnectRequest]:
    """The request stream: what is ready at once goes as one batch (never the hello)."""
    while True:
        ready = [await outbox.get()]
        while not outbox.empty() and len(ready) < MAX_BATCH and ready[-1] is not None:
            ready.append(outbox.get_nowait())
        end = ready[-1] is None
        messages = [m for m in ready if m is not None]
        if len(messages) == 1 or (messages and messages[0].WhichOneof("message") == "hello"):
            for message in messages:
                yield message
        elif messages:
            yield worker_pb2.ConnectRequest(batch=worker_pb2.RequestBatch(messages=messages))
        if end:
            return


async def _call(function: PhaseFunction, ctx: JobContext, threads: ThreadPoolExecutor) -> bytes:
    if inspect.iscoroutinefunction(function):
        value = await function(ctx)
    else:  # a plain function runs in a thread of its own (one per slot), as in the server
        value = await asyncio.get_running_loop().run_in_executor(threads, function, ctx)
    return protocol.to_bytes(value)


def _released(job: _Job, reason: str) -> worker_pb2.ConnectRequest:
    return worker_pb2.ConnectRequest(released=worker_pb2.ReleasedReport(job_id=job.id, attempt=job.attempt,
                                                                         reason=reason))


def _reason(exc: aio.AioRpcError) -> str:
    """The ErrorInfo reason of a refusal, read from the status details when present."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # noqa: PLC0415

            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""
