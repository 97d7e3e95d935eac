"""Handler kinds for tests, and the test side of their gate.

The server subprocess imports this module with ``--handlers tests.testkit`` (its cwd is the repo
root), so it must stay light: the kinds below use only asyncio and json. Test code imports
:class:`Gate` and :func:`launch` from here too.

A *gate* phase holds its handler at a point the test chooses. Its payload is JSON with the
``port`` of a small TCP server the test runs (:class:`Gate`). The phase connects, sends one line
of JSON ``{"job", "kind", "phase", "attempt", "results"}`` and waits for one byte:

    ``.``  return ``{"phase", "attempt", "results"}`` (JSON) as the phase result
    ``r``  raise RuntimeError (a retryable failure)
    ``p``  raise PermanentError
    EOF    raise PermanentError (the test went away; nothing lingers in a retry loop)

Only the ``stubborn`` kind ignores cancellation: it reports ``cancel-ignored`` on the connection
and keeps waiting for its byte, so the test can make it return after it has been abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jobwire_server.app import App
from jobwire_server.config import build_config
from jobwire_server.domain.clock import FakeClock
from jobwire_server.domain.models import Event, Job, NewJob
from jobwire_server.domain.states import FINAL_EVENTS, EventType
from jobwire_server.engine.hub import EventFilter, WatchHub
from jobwire_server.handlers import JobContext, Kind, MalformedPayload, PermanentError
from jobwire_server.handlers.registry import Registry

RELEASE = b"."
FAIL = b"r"
FAIL_PERMANENTLY = b"p"
CANCEL_IGNORED = "cancel-ignored"


# ----------------------------------------------------------------------------- server side


async def _gate(ctx: JobContext, *, stubborn: bool = False) -> bytes:
    spec: Any = ctx.json()
    if not isinstance(spec, dict) or not isinstance(spec.get("port"), int):
        raise MalformedPayload('gate payload must be JSON like {"port": 4242}')
    reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"])
    try:
        hello = {"job": ctx.job_id, "kind": ctx.kind, "phase": ctx.phase, "attempt": ctx.attempt,
                 "results": sorted(ctx.results)}
        writer.write(json.dumps(hello).encode() + b"\n")
        await writer.drain()
        while True:
            try:
                byte = await reader.read(1)
                break
            except asyncio.CancelledError:
                if not stubborn:
                    raise
                writer.write(CANCEL_IGNORED.encode() + b"\n")
                await writer.drain()
        if byte == RELEASE:
            return json.dumps({"phase": ctx.phase, "attempt": ctx.attempt, "results": sorted(ctx.results)}).encode()
        if byte == FAIL:
            raise RuntimeError(f"gate told phase {ctx.phase} to fail")
        if byte == FAIL_PERMANENTLY:
            raise PermanentError(f"gate told phase {ctx.phase} to fail permanently")
        raise PermanentError("gate closed")
    finally:
        writer.close()


gate = Kind("tk.gate", max_attempts=1)


@gate.phase("run")
async def gate_run(ctx: JobContext) -> bytes:
    return await _gate(ctx)


gate_media = Kind("tk.gate.media", queue="media", max_attempts=1)


@gate_media.phase("run")
async def gate_media_run(ctx: JobContext) -> bytes:
    return await _gate(ctx)


two = Kind("tk.two", max_attempts=1)


@two.phase("one")
async def two_one(ctx: JobContext) -> bytes:
    return await _gate(ctx)


@two.phase("two")
async def two_two(ctx: JobContext) -> bytes:
    return await _gate(ctx)


three = Kind("tk.three", max_attempts=1)


@three.phase("a")
async def three_a(ctx: JobContext) -> bytes:
    return await _gate(ctx)


@three.phase("b")
async def three_b(ctx: JobContext) -> bytes:
    return await _gate(ctx)


@three.phase("c")
async def three_c(ctx: JobContext) -> bytes:
    return await _gate(ctx)


stubborn = Kind("tk.stubborn", max_attempts=1)


@stubborn.phase("run")
async def stubborn_run(ctx: JobContext) -> bytes:
    return await _gate(ctx, stubborn=True)


# ----------------------------------------------------------------------------- test side


@dataclass(eq=False)
class GateCall:
    """One phase waiting at the gate."""

    job: str
    kind: str
    phase: str
    attempt: int
    results: list[str]
    reader: asyncio.StreamReader = field(repr=False)
    writer: asyncio.StreamWriter = field(repr=False)

    def release(self, outcome: bytes = RELEASE) -> None:
        """Let the phase go on with `outcome` (ignored when the handler is already gone)."""
        if not self.writer.is_closing():
            self.writer.write(outcome)

    async def line(self, within: float = 10.0) -> str:
        """The next line the handler sends after its hello ('' once it closed the connection)."""
        async with asyncio.timeout(within):
            return (await self.reader.readline()).decode().strip()

    async def closed(self, within: float = 10.0) -> None:
        """Wait until the handler closes its end (it returned, raised or was cancelled)."""
        async with asyncio.timeout(within):
            while await self.reader.read(4096):
                pass


class Gate:
    """The test's side: a TCP server on 127.0.0.1 that gate phases connect to."""

    def __init__(self) -> None:
        self.calls: list[GateCall] = []
        self._arrivals: asyncio.Queue[GateCall] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for call in self.calls:
            call.writer.close()
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = json.loads(await reader.readline())
        call = GateCall(hello["job"], hello["kind"], hello["phase"], hello["attempt"], hello["results"],
                        reader, writer)
        self.calls.append(call)
        self._arrivals.put_nowait(call)

    def payload(self, **extra: Any) -> bytes:
        return json.dumps({"port": self.port, **extra}).encode()

    async def next(self, within: float = 10.0) -> GateCall:
        """The next phase to arrive at the gate (in arrival order)."""
        async with asyncio.timeout(within):
            return await self._arrivals.get()

    async def take(self, count: int, within: float = 10.0) -> list[GateCall]:
        return [await self.next(within) for _ in range(count)]

    def waiting(self) -> int:
        """Arrivals not yet taken with next()."""
        return self._arrivals.qsize()

    def release_all(self, outcome: bytes = RELEASE) -> None:
        for call in self.calls:
            call.release(outcome)


# ----------------------------------------------------------------------------- in-process helpers (tests only)


class Recorder:
    """Every event the app's hub publishes from the moment this is made, kept in order."""

    def __init__(self, hub: WatchHub) -> None:
        self._sub = hub.subscribe_all(EventFilter())
        self.events: list[Event] = []

    def of(self, job_id: str) -> list[Event]:
        return [e for e in self.events if e.job_id == job_id]

    def types(self, job_id: str) -> list[EventType]:
        return [e.type for e in self.of(job_id)]

    async def pump(self) -> Event:
        """Wait for the next published event and record it."""
        event = await self._sub.next()
        if event is None:
            raise AssertionError("the hub closed the recorder's subscription")
        self.events.append(event)
        return event

    async def wait(self, job_id: str, event_type: EventType, count: int = 1, within: float = 5.0) -> Event:
        """The `count`-th event of `event_type` of the job (already recorded or still to come)."""
        async with asyncio.timeout(within):
            while True:
                found = [e for e in self.of(job_id) if e.type is event_type]
                if len(found) >= count:
                    return found[count - 1]
                await self.pump()

    async def wait_final(self, job_id: str, within: float = 5.0) -> Event:
        """The job's terminal event (SUCCEEDED, FAILED or CANCELLED)."""
        async with asyncio.timeout(within):
            while True:
                for event in self.of(job_id):
                    if event.type in FINAL_EVENTS:
                        return event
                await self.pump()


class Harness:
    """Builds in-process apps (real store and engine, gRPC on a free port) and stops them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.apps: list[App] = []

    async def start(self, *kinds: Kind, clock: FakeClock | None = None, db: str = "j.db",
                    tracer_provider: Any = None, **settings: Any) -> App:
        """`tracer_provider`: an OpenTelemetry TracerProvider for the app (tracing off when None)."""
        values = {"db": db if "://" in db else str(self.directory / db), "listen": "127.0.0.1:0",
                  "shutdown_grace": 1.0,
                  "cancel_grace": 0.5, "lease_ttl": 3600.0, "watch_buffer": 100_000, **settings}
        app = App(build_config(values), clock=clock or FakeClock(), registry=Registry(kinds),
                  tracer_provider=tracer_provider)
        self.apps.append(app)
        await app.start()
        return app

    async def stop_all(self) -> None:
        for app in reversed(self.apps):
            await app.stop()


def new_job(kind: Kind, payload: bytes = b"", *, now: float, delay: float = 0.0, priority: int = 5,
            max_attempts: int | None = None, timeout: float | None = None, queue: str | None = None,
            dedupe_key: str = "", request_id: str = "", labels: dict[str, str] | None = None) -> NewJob:
    """A NewJob of `kind` as the API would build it (the kind's defaults unless given)."""
    return NewJob(queue=queue or kind.queue, kind=kind.name, payload=payload, priority=priority,
                  run_at=now + delay, max_attempts=max_attempts or kind.max_attempts,
                  timeout=kind.timeout if timeout is None else timeout, phase_names=kind.phases_for(payload),
                  dedupe_key=dedupe_key, request_id=request_id,
                  fingerprint=json.dumps([kind.name, payload.hex(), priority, delay]),
                  labels=MappingProxyType(labels or {}))


async def enqueue(app: App, kind: Kind, payload: bytes = b"", **options: Any) -> Job:
    (result,) = await app.service.enqueue([new_job(kind, payload, now=app.clock.now(), **options)])
    return result.job


async def claim_round(app: App) -> None:
    """Wake the dispatcher and wait until it has finished one claim round."""
    done = app.dispatcher.claimed
    app.dispatcher.wake()
    async with asyncio.timeout(5):
        await done.wait()


# ----------------------------------------------------------------------------- gRPC helpers (tests only)


def error_details(err: Any) -> tuple[str, dict[str, str]]:
    """(ErrorInfo reason, {field: description} of the BadRequest) of a failed call."""
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

    reason, fields = "", {}
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.update({v.field: v.description for v in bad.field_violations})
    return reason, fields


async def stream(stub: Any, job_id: str, after: int = 0, within: float = 20.0) -> list[Any]:
    """Every message of one WatchJob stream, until the server ends it."""
    from jobwire.v1 import jobwire_pb2  # noqa: PLC0415

    async with asyncio.timeout(within):
        return [e async for e in stub.WatchJob(jobwire_pb2.WatchJobRequest(id=job_id, after_sequence=after))]


async def finished(stub: Any, job_id: str, within: float = 20.0) -> Any:
    """Wait until the job has finished; its terminal event (or the SNAPSHOT of a finished job).

    Uses ``after_sequence=0`` (a snapshot, then live events newer than it), which cannot miss the end;
    a stream that replays from ``after_sequence`` can hang when the job finishes while the stream
    starts (see test_engine_watch.py)."""
    return (await stream(stub, job_id, 0, within))[-1]


async def watch(stub: Any, job_id: str, after: int = 1, within: float = 20.0) -> list[Any]:
    """The job's stored events after `after` (default: all after ENQUEUED), once it has finished."""
    await finished(stub, job_id, within)
    return await stream(stub, job_id, after, within)


async def until_event(stub: Any, job_id: str, event_type: int, after: int = 1, within: float = 20.0) -> Any:
    """The first event of `event_type` of the job (stored or live), without waiting for the end."""
    from jobwire.v1 import jobwire_pb2  # noqa: PLC0415

    call = stub.WatchJob(jobwire_pb2.WatchJobRequest(id=job_id, after_sequence=after))
    try:
        async with asyncio.timeout(within):
            async for event in call:
                if event.type == event_type:
                    return event
    finally:
        call.cancel()
    raise AssertionError(f"job {job_id}: the stream ended without event {event_type}")


def launch(directory: Path, db: Path | None = None, **flags: object) -> Any:
    """Start `jobwire serve` like the `start_server` fixture does, for fixtures of a wider scope.
    Returns a tests.conftest.ServerProcess; the caller stops it."""
    import signal  # noqa: PLC0415 - keep the handler module light for the server
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.conftest import REPO, ServerProcess, free_port, wait_serving  # noqa: PLC0415

    port = free_port()
    db_path = db or directory / "jobwire.db"
    args = [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db_path)]
    for name, value in flags.items():
        for item in value if isinstance(value, list) else [value]:
            args += ["--" + name.replace("_", "-"), str(item)]
    log_path = directory / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"127.0.0.1:{port}", db_path, log_path)
    try:
        wait_serving(server.target, process)
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server failed to start:\n{server.log()}") from None
    return server


@contextlib.contextmanager
def running(directory: Path, **flags: object) -> Iterator[Any]:
    """A server for a module-scoped fixture; SIGTERM (then SIGKILL) at the end."""
    import subprocess  # noqa: PLC0415

    server = launch(directory, **flags)
    try:
        yield server
    finally:
        try:
            server.stop(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
