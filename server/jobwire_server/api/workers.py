"""`jobwire.v1.WorkerService` over grpc.aio: one Connect stream per worker session.

The stream's first message must be a hello; the rest are handled as they come. Reports about jobs
are answered with acks (never by ending the stream, so one bad report cannot cost the worker its
other jobs); a protocol error (no hello, a second hello, an empty message, bad credit) ends the
stream with a precise status. Each report is handled in a task of its own, so the reports of many
jobs share the writer's commits; the reports of one job keep their order (the run's lock).

A sender task writes the session's outbox to the stream (the only writer of it); a watchdog ends a
session it has not heard from for three ping intervals. Ending a session leaves its jobs leased.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio
from jobwire.v1 import worker_pb2, worker_pb2_grpc

from jobwire_server.api.auth import TokenAuthInterceptor, scope_refused
from jobwire_server.api.errors import abort, abort_with, status_with
from jobwire_server.api.worker_convert import command_to_proto, hello_from_proto, report_from_proto
from jobwire_server.domain.clock import Clock
from jobwire_server.domain.errors import FieldViolation, InvalidArgument, ShuttingDown
from jobwire_server.engine.remote.executor import RemoteExecutor
from jobwire_server.engine.remote.messages import Hello, Pong, Report
from jobwire_server.engine.remote.session import Session

Context = aio.ServicerContext[Any, Any]
log = logging.getLogger("jobwire.workers")

HELLO_REQUIRED = "HELLO_REQUIRED"
WORKER_SILENT = "WORKER_SILENT"
#: Pings a session may miss before the watchdog ends it.
MISSED_PINGS = 3
#: Messages sent as one batch at most.
MAX_BATCH = 256


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, remote: RemoteExecutor, clock: Clock, *, auth: TokenAuthInterceptor | None = None) -> None:
        self._remote = remote
        self._clock = clock
        self._auth = auth
        self.accepting = True
        #: Sessions open now, and an event set (and replaced) each time one ends: tests wait on it to
        #: see that nothing leaks.
        self.open_streams = 0
        self.stream_ended = asyncio.Event()

    async def Connect(self, request_iterator: AsyncIterator[worker_pb2.ConnectRequest],  # type: ignore[override]
                      context: Context) -> None:
        requests = aiter(request_iterator)
        hello = await self._hello(requests, context)
        try:
            session = await self._remote.open_session(hello)
        except Exception as exc:  # KindMismatch, KindInProcess, storage faults: their statuses
            await abort(context, exc)
        self.open_streams += 1
        sender = asyncio.create_task(self._send(session, context), name=f"worker-send-{session.id}")
        watchdog = asyncio.create_task(self._watch(session), name=f"worker-watch-{session.id}")
        reports: set[asyncio.Task[None]] = set()
        # The reading runs in a task of its own, so a silent session can be ended with a status the
        # worker sees: cancelling the method itself would leave the worker's stream hanging open.
        reader = asyncio.create_task(self._receive(session, requests, context, reports),
                                     name=f"worker-read-{session.id}")
        try:
            done, _ = await asyncio.wait({reader, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()  # how the stream ended: by the worker, or a protocol error (aborted)
            else:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await abort_with(context, status_with(
                    grpc.StatusCode.UNAVAILABLE, f"nothing heard from the worker for {MISSED_PINGS} ping intervals; "
                    "reconnect", WORKER_SILENT))
        finally:
            self.open_streams -= 1
            self.stream_ended.set()
            self.stream_ended = asyncio.Event()
            watchdog.cancel()
            reader.cancel()
            self._remote.close_session(session)
            await asyncio.gather(sender, return_exceptions=True)
            for task in reports:
                task.cancel()

    async def _hello(self, requests: AsyncIterator[worker_pb2.ConnectRequest], context: Context) -> Hello:
        if not self.accepting:
            await abort(context, ShuttingDown())
        first = await anext(requests, None)
        if first is None or first.WhichOneof("message") != "hello":
            await abort_with(context, status_with(grpc.StatusCode.FAILED_PRECONDITION,
                                                  "the first message of a worker session must be a hello",
                                                  HELLO_REQUIRED))
        try:
            hello = hello_from_proto(first.hello)
        except InvalidArgument as exc:
            await abort(context, exc)
        await self._check_queues(hello, context)
        return hello

    async def _check_queues(self, hello: Hello, context: Context) -> None:
        """A `jobs:work` token limited to some queues serves only those (and must name them)."""
        if self._auth is None:
            return
        token = self._auth.authenticate(context.invocation_metadata())
        if token is not None and not token.may_serve(hello.queues):
            allowed = ", ".join(sorted(token.queues))
            await abort_with(context, scope_refused(token, "jobs:work",
                                                    f"queues {list(hello.queues) or 'all'} (it allows {allowed})"))

    async def _receive(self, session: Session, requests: AsyncIterator[worker_pb2.ConnectRequest],
                       context: Context, reports: set[asyncio.Task[None]]) -> None:
        async for message in requests:
            session.last_heard = self._clock.now()
            if message.WhichOneof("message") == "batch":
                for item in message.batch.messages:
                    if item.WhichOneof("message") == "batch":
                        await abort(context, InvalidArgument([FieldViolation("batch.messages",
                                                                             "a batch must not hold a batch")]))
                    await self._one(session, item, context, reports)
            else:
                await self._one(session, message, context, reports)

    async def _one(self, session: Session, message: worker_pb2.ConnectRequest, context: Context,
                   reports: set[asyncio.Task[None]]) -> None:
        which = message.WhichOneof("message")
        if which == "ping":
            session.send(Pong(message.ping.nonce))
        elif which == "credit":
            if message.credit.slots < 1:
                await abort(context, InvalidArgument([FieldViolation("credit.slots", "must be at least 1")]))
            self._remote.credit(session, message.credit.slots)
        elif which == "draining":
            self._remote.worker_draining(session)
        elif which == "hello":
            await abort_with(context, status_with(grpc.StatusCode.FAILED_PRECONDITION,
                                                  "a session takes one hello; reconnect to start another",
                                                  HELLO_REQUIRED))
        else:
            report = report_from_proto(message)
            if report is None:
                await abort(context, InvalidArgument([FieldViolation("message", "no message is set")]))
            self._handle(session, report, reports)

    def _handle(self, session: Session, report: Report, reports: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(self._remote.report(session, report))
        reports.add(task)
        task.add_done_callback(lambda done: _finished(done, reports))

    async def _send(self, session: Session, context: Context) -> None:
        """Write the outbox to the stream: what is ready at once goes as one batch (a message each
        costs far more than the bytes)."""
        while True:
            commands = [await session.outbox.get()]
            while not session.outbox.empty() and len(commands) < MAX_BATCH and commands[-1] is not None:
                commands.append(session.outbox.get_nowait())
            last = commands[-1] is None
            ready = [command_to_proto(c) for c in commands if c is not None]
            try:
                if len(ready) == 1:
                    await context.write(ready[0])
                elif ready:
                    await context.write(worker_pb2.ConnectResponse(batch=worker_pb2.ResponseBatch(messages=ready)))
            except Exception as exc:  # the stream is gone; the reader sees it end too
                log.debug("session %s: send failed: %s", session.id, exc)
                return
            if last:
                return

    async def _watch(self, session: Session) -> None:
        """Return once the session has been silent for MISSED_PINGS ping intervals."""
        interval = self._remote.ping_interval
        while True:
            await asyncio.sleep(interval)  # sleep-ok: the liveness check's beat, at the ping interval
            if self._clock.now() - session.last_heard > interval * MISSED_PINGS:
                log.warning("worker %r (session %s) silent for %.1fs; ending its session", session.worker_id,
                            session.id, self._clock.now() - session.last_heard)
                return


def _finished(task: asyncio.Task[None], reports: set[asyncio.Task[None]]) -> None:
    reports.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a worker report failed; its job's lease will expire and it will be retried",
                  exc_info=task.exception())
