"""Remote workers for tests: `jobwire worker --handlers tests.workerkit` as a subprocess (the real
command), and a raw `WorkerService.Connect` session that sends exactly the frames a test chooses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
from grpc import aio
from jobwire.v1 import worker_pb2, worker_pb2_grpc

from tests.conftest import REPO
from tests.testkit import error_details


class WorkerProcess:
    """A `jobwire worker` subprocess; its stderr lines are kept (and can be waited for)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def line(self, text: str, count: int = 1, within: float = 20.0) -> str:
        """The `count`-th log line containing `text` (already written or still to come)."""
        async with asyncio.timeout(within):
            while True:
                found = [line for line in self.lines if text in line]
                if len(found) >= count:
                    return found[count - 1]
                if self.process.returncode is not None and self._reader.done():
                    raise AssertionError(f"worker exited ({self.process.returncode}) without {text!r}:\n{self.log}")
                self._changed.clear()
                await self._changed.wait()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)

    async def stop(self) -> int:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self._reader
        return code


@contextlib.asynccontextmanager
async def workers() -> AsyncIterator[Any]:
    """A factory of connected worker processes; all are stopped at the end."""
    started: list[WorkerProcess] = []

    async def start(target: str, *flags: str, slots: int = 4, connected: bool = True) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobwire.cli", "worker", "--target", target, "--handlers", "tests.workerkit",
            "--slots", str(slots), "--drain-timeout", "2", *flags, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env={**os.environ})
        worker = WorkerProcess(process)
        started.append(worker)
        if connected:
            await worker.line("connected to")
        return worker

    try:
        yield start
    finally:
        for worker in started:
            await worker.stop()


class RawSession:
    """One Connect stream driven frame by frame."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] | None = None) -> None:
        self._channel = aio.insecure_channel(target)
        self._outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        self._unpacked: deque[worker_pb2.ConnectResponse] = deque()
        #: Batches received (their messages are returned one by one).
        self.batches = 0
        stub = worker_pb2_grpc.WorkerServiceStub(self._channel)
        self.call = stub.Connect(self._requests(), metadata=metadata)

    async def _requests(self) -> AsyncIterator[worker_pb2.ConnectRequest]:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            yield message

    def send(self, hello: worker_pb2.WorkerHello | None = None, **message: Any) -> None:
        if hello is not None:
            message["hello"] = hello
        self.put(worker_pb2.ConnectRequest(**message))

    def put(self, message: worker_pb2.ConnectRequest) -> None:
        self._outbox.put_nowait(message)

    async def recv(self, within: float = 10.0) -> worker_pb2.ConnectResponse:
        """The next message (the messages of a batch one by one, in order)."""
        if self._unpacked:
            return self._unpacked.popleft()
        async with asyncio.timeout(within):
            response = await self.call.read()
        if response is aio.EOF:
            raise AssertionError(f"the stream ended: {await self.call.code()} {await self.call.details()}")
        if response.WhichOneof("message") == "batch":
            self.batches += 1
            self._unpacked.extend(response.batch.messages)
            return self._unpacked.popleft()
        return response  # type: ignore[no-any-return]

    async def recv_only(self, which: str, within: float = 10.0) -> Any:
        """The next message of type `which` (pongs and credits in between are skipped)."""
        while True:
            response = await self.recv(within)
            if response.WhichOneof("message") == which:
                return getattr(response, which)
            if response.WhichOneof("message") not in ("pong", "drain"):
                raise AssertionError(f"expected {which}, got {response}")

    async def status(self, within: float = 10.0) -> grpc.StatusCode:
        """How the stream ended (reading what is left)."""
        async with asyncio.timeout(within):
            with contextlib.suppress(aio.AioRpcError):
                while await self.call.read() is not aio.EOF:
                    pass
            return await self.call.code()  # type: ignore[no-any-return]

    async def reason(self) -> tuple[str, dict[str, str]]:
        """(ErrorInfo reason, BadRequest fields) of the status the stream ended with."""
        metadata = await self.call.trailing_metadata()
        return error_details(SimpleNamespace(trailing_metadata=lambda: metadata))

    async def drop(self) -> None:
        """Close the connection with the stream still open (a worker that dies)."""
        self.call.cancel()
        await self._channel.close()

    async def close(self) -> grpc.StatusCode:
        """Half-close and wait for the server to end the stream."""
        self._outbox.put_nowait(None)
        code = await self.status()
        await self._channel.close()
        return code


def hello(*kinds: tuple[str, tuple[str, ...]], slots: int = 4, worker_id: str = "raw-1", queues: tuple[str, ...] = (),
          held: tuple[tuple[str, int, str], ...] = ()) -> worker_pb2.WorkerHello:
    return worker_pb2.WorkerHello(
        worker_id=worker_id, sdk_name="raw", sdk_version="0", slots=slots, queues=list(queues),
        kinds=[worker_pb2.WorkerKind(name=name, phases=list(phases)) for name, phases in kinds],
        held=[worker_pb2.HeldJob(job_id=j, attempt=a, phase=p) for j, a, p in held])
