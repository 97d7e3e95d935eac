"""The PostgreSQL drain floor: pgqueuer draining prefilled noop jobs, run as its own process
(`python -m bench.pgqueuer_floor SPEC`, SPEC a JSON object; the result is one JSON line on stdout).

pgqueuer is a PostgreSQL job queue for Python on asyncpg (the `bench` extra installs it). The
floor uses its own API the way its CLI and its own drain benchmark do:

- a scratch database `database` is created through `admin_url`, pgqueuer's schema installed in
  it (`Queries.install()`, its default durability: every table logged), then `jobs` noop jobs
  inserted with its batch enqueue (`Queries.enqueue` with lists), 1,000 per call;
- `consumers` QueueManagers, each on its own asyncpg connection (`AsyncpgDriver`), register a
  no-op async entrypoint and `run(batch_size=…, mode=QueueExecutionMode.drain)`: each one stops
  once nothing is queued and its own jobs are finished and logged (`dequeue_timeout` is 1 s instead
  of 30 so that it notices soon after the last job; it only bounds waits while nothing is queued);
- on uvloop when `uvloop` is true, as pgqueuer's CLI (`pgq run`) runs.

The database keeps the server's settings (synchronous_commit and the rest): nothing is changed
for the floor, and the settings it ran with are reported. The rate is jobs / (the first dequeue
query sent → the last completion written: the return of the last `log_jobs`, which deletes
finished jobs from the queue and logs them, in one statement per flush). Both are timed by a
`Queries` subclass around pgqueuer's own calls. The database is dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta
from typing import Any

from bench import pg

try:
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode
except ImportError as missing:  # say so in the result line instead of a traceback
    sys.stdout.write(json.dumps({"error": f"pgqueuer is not installed ({missing}): `make bench` installs it "
                                          "(the bench extra: pip install -e '.[bench]')"}) + "\n")
    raise SystemExit(1) from None

ENTRYPOINT = "noop"
PREFILL_BATCH = 1000
#: What the spec may leave out.
DEFAULTS: dict[str, Any] = {"admin_url": pg.DEFAULT_ADMIN_URL, "jobs": 20_000, "consumers": 5, "batch_size": 10,
                            "uvloop": True, "timeout": 300.0}
#: PostgreSQL settings that bound a drain's commits, reported beside the rate.
REPORTED_SETTINGS = ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers", "server_version")


class Clock:
    """First dequeue sent, last completion written, completions counted, across consumers."""

    def __init__(self) -> None:
        self.first_dequeue = 0.0
        self.last_completion = 0.0
        self.succeeded = 0
        self.other: dict[str, int] = {}
        self.flushes = 0


class TimedQueries(Queries):
    """pgqueuer's own queries, with the first dequeue and every completion timed."""

    clock: Clock

    async def dequeue(self, *args: Any, **kwargs: Any) -> list[Job]:
        if not self.clock.first_dequeue:
            self.clock.first_dequeue = time.perf_counter()
        return await super().dequeue(*args, **kwargs)

    async def log_jobs(self, job_status: list[Any]) -> None:
        await super().log_jobs(job_status)
        clock = self.clock
        clock.last_completion = time.perf_counter()
        clock.flushes += 1
        for _, status, _ in job_status:
            if status == "successful":
                clock.succeeded += 1
            else:
                clock.other[status] = clock.other.get(status, 0) + 1


async def _prefill(url: str, jobs: int) -> float:
    conn = await pg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        started = time.perf_counter()
        for start in range(0, jobs, PREFILL_BATCH):
            count = min(PREFILL_BATCH, jobs - start)
            await queries.enqueue([ENTRYPOINT] * count, [b"x"] * count, [0] * count)
        seconds = time.perf_counter() - started
        queued = await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE status = 'queued'")
        if queued != jobs:
            raise RuntimeError(f"prefill left {queued} of {jobs} jobs queued")
        return seconds
    finally:
        await conn.close()


async def _drain(url: str, consumers: int, batch_size: int) -> Clock:
    clock = Clock()
    conns = [await pg.connect(url) for _ in range(consumers)]
    try:
        managers = []
        for conn in conns:
            queries = TimedQueries(AsyncpgDriver(conn))
            queries.clock = clock
            manager = QueueManager(queries)

            @manager.entrypoint(ENTRYPOINT)
            async def noop(job: Job) -> None:
                return None

            managers.append(manager)
        await asyncio.gather(*(m.run(batch_size=batch_size, mode=QueueExecutionMode.drain,
                                     dequeue_timeout=timedelta(seconds=1)) for m in managers))
    finally:
        for conn in conns:
            await conn.close()
    return clock


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    spec = {**DEFAULTS, **spec}
    admin_url, jobs = str(spec["admin_url"]), int(spec["jobs"])
    consumers, batch_size = int(spec["consumers"]), int(spec["batch_size"])
    name = str(spec.get("database") or pg.scratch_name("pgq"))
    url = await pg.create_database(admin_url, name)
    try:
        settings = await pg.server_settings(url, REPORTED_SETTINGS)
        prefill_seconds = await _prefill(url, jobs)
        clock = await asyncio.wait_for(_drain(url, consumers, batch_size), float(spec["timeout"]))
        conn = await pg.connect(url)
        try:
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        finally:
            await conn.close()
    finally:
        await pg.drop_database(admin_url, name)
    if clock.succeeded != jobs or left or clock.other:
        raise RuntimeError(f"{clock.succeeded} of {jobs} jobs succeeded, {left} left in the queue, "
                           f"other outcomes {clock.other}")
    seconds = clock.last_completion - clock.first_dequeue
    return {"jobs": jobs, "seconds": seconds, "rate": jobs / seconds, "consumers": consumers,
            "batch_size": batch_size, "loop": "uvloop" if spec["uvloop"] else "asyncio",
            "log_flushes": clock.flushes, "prefill_seconds": prefill_seconds,
            "first_dequeue": clock.first_dequeue, "last_completion": clock.last_completion, "settings": settings}


def main() -> None:
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        if spec.get("uvloop", DEFAULTS["uvloop"]):
            import uvloop  # noqa: PLC0415 - only when asked for

            result = uvloop.run(run(spec))
        else:
            result = asyncio.run(run(spec))
    except Exception as exc:
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc or 'no detail'}"}) + "\n")
        raise SystemExit(1) from None
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
