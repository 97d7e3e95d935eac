"""Helpers of the replica tests: `jobwire serve` replicas on one PostgreSQL database, the ledger
their handlers keep (tests/replicas/ledger.py), the database read directly, and WatchEvents
streams recorded in the background."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc

from tests.conftest import ServerProcess, StartServer
from tests.testkit import error_details

T = TypeVar("T")

HANDLERS = "tests.replicas.ledger"
#: How long PostgreSQL lets a session sit idle inside a transaction (a frozen replica's): well
#: under the lease_ttl these tests use, so the others are not held up past their own leases.
IDLE_IN_TRANSACTION = "1s"
#: Polling period of the waits below (each has a deadline): a database or a stream is looked at.
POLL = 0.05


def replica_url(url: str, name: str) -> str:
    """The database URL a replica is started with: its name as application_name (pg_stat_activity
    tells the replicas apart) and the idle-in-transaction limit above."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(
        query=f"application_name={name}&idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION}"))


@dataclass
class Replica:
    """One replica; `restart` gives it a new process (a new incarnation, on a new port)."""

    name: str
    server: ServerProcess
    incarnation: int = 1

    @property
    def target(self) -> str:
        return self.server.target

    @property
    def identity(self) -> str:
        """What its handlers write into the ledger: the replica and its incarnation, e.g. "r1.2"."""
        return f"{self.name}.{self.incarnation}"

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def log(self) -> str:
        return self.server.log()

    def kill(self) -> None:
        self.server.stop(signal.SIGKILL, timeout=10)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


class Cluster:
    """Replicas started with the `start_server` fixture on one database, all with the ledger handlers."""

    def __init__(self, start_server: StartServer, url: str, ledger_dir: Path, **flags: Any) -> None:
        self._start_server = start_server
        self.url = url
        self.ledger_dir = ledger_dir
        # A short shutdown grace: replicas stopped after a test may still run jobs that never end.
        self.flags = {"handlers": HANDLERS, "db_pool_size": 4, "shutdown_grace": 1, **flags}
        self.replicas: dict[str, Replica] = {}
        ledger_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, **flags: Any) -> Replica:
        old = self.replicas.get(name)
        incarnation = old.incarnation + 1 if old is not None else 1
        env = {"JOBWIRE_LEDGER": str(self.ledger_dir), "JOBWIRE_REPLICA": f"{name}.{incarnation}"}
        server = self._start_server(db=replica_url(self.url, name), env=env, **{**self.flags, **flags})
        replica = Replica(name, server, incarnation)
        self.replicas[name] = replica
        return replica

    def ledger(self) -> list[dict[str, Any]]:
        """Every line every replica's handlers wrote, in the order of their times."""
        lines = [json.loads(line) for path in sorted(self.ledger_dir.glob("*.jsonl"))
                 for line in path.read_text().splitlines()]
        return sorted(lines, key=lambda line: line["time"])

    def ledger_of(self, job_id: str) -> list[dict[str, Any]]:
        return [line for line in self.ledger() if line["job"] == job_id]


def stub(channel: grpc.aio.Channel) -> jobwire_pb2_grpc.JobServiceStub:
    return jobwire_pb2_grpc.JobServiceStub(channel)


async def wait_until(check: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    """Poll `check` until it returns something truthy (returned), failing after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g}s: {what} (last: {value!r})")
        await asyncio.sleep(POLL)  # sleep-ok: the poll interval of a wait with a deadline


# ----------------------------------------------------------------------------- the database, read directly


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    type: str
    time: float
    phase: str
    detail: str


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=10)


async def stored_events(conn: asyncpg.Connection, job_ids: list[str] | None = None) -> dict[str, list[StoredEvent]]:
    """Each job's events as stored, in sequence order."""
    query = ("SELECT job_id::text, seq, type, extract(epoch FROM time)::float8, phase, detail FROM events"
             + ("" if job_ids is None else " WHERE job_id = ANY($1::uuid[])") + " ORDER BY job_id, seq")
    rows = await conn.fetch(query, *([] if job_ids is None else [job_ids]))
    events: dict[str, list[StoredEvent]] = defaultdict(list)
    for row in rows:
        events[row[0]].append(StoredEvent(row[1], row[2], row[3], row[4], row[5]))
    return dict(events)


async def count_state(conn: asyncpg.Connection, state: str, kind: str | None = None) -> int:
    if kind is None:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE state = $1", state))
    return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE state = $1 AND kind = $2", state, kind))


async def unrescued_expired_leases(conn: asyncpg.Connection) -> int:
    """RUNNING jobs whose lease has run out (nobody has rescued them yet)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE state = 'RUNNING' AND lease_expires < to_timestamp($1)", time.time()))


# ----------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class Seen:
    job_id: str
    sequence: int
    type: int
    at: float  # time.time() when the test received it


@dataclass
class EventStream:
    """One WatchEvents stream, read in the background into `seen` until it ends or is closed."""

    label: str
    target: str
    request: pb.WatchEventsRequest
    seen: list[Seen] = field(default_factory=list)
    #: (status code, ErrorInfo reason) the stream ended with; None while it runs.
    ended: tuple[grpc.StatusCode, str] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _channel: grpc.aio.Channel | None = None
    _task: asyncio.Task[None] | None = None

    def open(self) -> EventStream:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._task = asyncio.get_running_loop().create_task(self._read(), name=f"watch-{self.label}")
        return self

    async def _read(self) -> None:
        assert self._channel is not None
        call = stub(self._channel).WatchEvents(self.request)
        try:
            async for event in call:
                self.seen.append(Seen(event.job_id, event.sequence, event.type, time.time()))
                self.arrived.set()
        except grpc.aio.AioRpcError as error:
            self.ended = (error.code(), error_details(error)[0])
        else:
            self.ended = (grpc.StatusCode.OK, "")
        self.arrived.set()

    def jobs(self) -> set[str]:
        return {s.job_id for s in self.seen}

    async def wait_jobs(self, job_ids: set[str], within: float) -> None:
        """Until this stream has shown an event of every job in `job_ids` (or ended)."""
        async def done() -> bool:
            return job_ids <= self.jobs() or self.ended is not None
        await wait_until(done, within, f"stream {self.label} to show {len(job_ids - self.jobs())} more jobs")

    async def until_ended(self, within: float) -> tuple[grpc.StatusCode, str]:
        async def ended() -> tuple[grpc.StatusCode, str] | None:
            return self.ended
        return await wait_until(ended, within, f"stream {self.label} to end")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()
