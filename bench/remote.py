"""Remote workers: drain throughput with one and two `jobwire worker` processes (default slots)
against the in-process drain measured the same way in the same run, the CPU each drain costs per
job and where it goes, and pickup latency with an idle remote worker.

Each drain starts the server (and its workers, waiting until each is connected), enqueues
`drain_jobs` noop jobs in-process in batches of 1,000 as fast as the writer takes them, and runs from
the first enqueue to the last SUCCEEDED event (a hub listener): the in-process figure uses the
built-in `noop` kind, the remote ones `bench.remote-noop` (bench/remote_kinds.py) on the workers.
Rounds alternate the order of the three drains; medians over the rounds.

CPU: read when the first enqueue starts and again once the last job succeeded (`Meter`, `Usage`):
this process (it hosts the server; the enqueueing is part of the drain and counted, the bench's own
event counting is timed and taken out), its event-loop thread and SQLite database thread (time on a
CPU and waiting for one), each worker process and its main thread, with `--store postgres` the
PostgreSQL processes (`Database`), and the busy time of the machine's CPUs, whoever used them; beside
them, the time a write transaction was in flight (`Transactions`). From these: CPU per job, the
ceiling the machine's cores put on the two-worker drain (cores / CPU per job), and what bounds the
one-worker drain (`bound`).

Pickup: a probe job is enqueued while the worker is idle; its handler returns the time it started
(`time.perf_counter`, CLOCK_MONOTONIC on Linux: one clock for every process), compared with when the
commit that carried the enqueue ended (`writer.last_commit_at`, the same clock).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jobwire_server.app import App
from jobwire_server.domain.models import Event, NewJob
from jobwire_server.domain.states import EventType

from bench import pg
from bench.common import ROOT, Failed, Figure, Run, Target, bounded, make_app, median, percentile, start_app, stop_app

REMOTE_SHARE = 0.5
TWO_WORKERS = 2.0
PICKUP_P50_MS = 2.0
PICKUP_P99_MS = 5.0
BATCH = 1000
NOOP, PROBE = "bench.remote-noop", "bench.remote-probe"
#: A thread on a CPU this share of the time limits its process; a writer in a transaction this share
#: of the time is what the drain waits for; cores this busy leave it nothing more.
SATURATED = 0.9
#: /proc reports CPU time in these ticks per second.
TICKS = os.sysconf("SC_CLK_TCK")
#: The server's SQLite thread that runs every write transaction (jobwire_server.store.sqlite).
DATABASE_THREAD = "jobwire-db-writer"
#: The CPUs this process (and the workers and database it starts) may run on.
CORES = sorted(os.sched_getaffinity(0))


class WorkerProcess:
    """`jobwire worker --handlers bench.remote_kinds` in its own process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, target: str, name: str) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobwire.cli", "worker", "--target", target, "--handlers", "bench.remote_kinds",
            "--worker-id", name, "--drain-timeout", "2", cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        worker = cls(process)
        await bounded(worker._connected(), 30, f"worker {name} connecting")
        return worker

    async def _connected(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            if b"connected to" in line:
                asyncio.get_running_loop().create_task(self._drain_stderr())
                return
        raise Failed(f"worker exited ({await self.process.wait()}) before connecting")

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        async for _ in self.process.stderr:
            pass

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, all its threads, from /proc/<pid>/stat;
    None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # After "pid (comm) " the fields start at the third, state; utime and stime are the 14th and 15th.
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_times(pid: int, thread: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of one thread, from its schedstat;
    None once it is gone. The wait is the CPU the machine did not have for it."""
    try:
        with open(f"/proc/{pid}/task/{thread}/schedstat", encoding="ascii") as schedstat:
            ran, waited, _ = schedstat.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(ran) / 1e9, int(waited) / 1e9


def machine_busy() -> float:
    """CPU seconds the CPUs of `CORES` have spent not idle, whoever ran on them (/proc/stat)."""
    busy = 0
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in CORES:
                # user nice system idle iowait irq softirq steal: all but idle and iowait were taken.
                values = [int(t) for t in ticks[:8]]
                busy += sum(values) - values[3] - values[4]
    return busy / TICKS


def server_threads() -> dict[str, int]:
    """The server threads read on their own, by label: the event loop (this thread) and, on
    SQLite, the database thread that runs every write transaction."""
    threads = {"server_loop": threading.get_native_id()}
    for thread in threading.enumerate():
        if thread.name == DATABASE_THREAD and thread.native_id is not None:
            threads["server_db"] = thread.native_id
    return threads


class Transactions:
    """Times the server's write transactions (`store.write`, which in a drain only the writer
    calls, one at a time): the share of the drain with a transaction in flight says whether the one
    writer is what the drain waits for. Overlapping calls count once. It wraps the store instance's
    method; the server's code is unchanged."""

    def __init__(self, app: App) -> None:
        self.done = 0.0
        self.began: float | None = None
        self.in_flight = 0
        write = app.store.write

        async def timed(ops: Sequence[Any]) -> list[Any]:
            if not self.in_flight:
                self.began = time.perf_counter()
            self.in_flight += 1
            try:
                return await write(ops)
            finally:
                self.in_flight -= 1
                if not self.in_flight and self.began is not None:
                    self.done += time.perf_counter() - self.began
                    self.began = None

        setattr(app.store, "write", timed)  # noqa: B010 - mypy refuses assigning to a method

    def busy(self, now: float) -> float:
        """Seconds spent in transactions so far, the one in flight up to `now` included."""
        return self.done + (0.0 if self.began is None else now - self.began)


class Database:
    """The PostgreSQL processes a drain keeps busy, found through pg_stat_activity: the backends of
    the drain's own database (the server's pool, autovacuum on it) and the server's shared processes
    (no database: WAL writer, checkpointer, background writer), which also serve everyone else's
    databases. A backend that exits within the window takes its CPU with it (the pool keeps its
    connections, so none should)."""

    def __init__(self, admin_url: str, db_url: str) -> None:
        self.admin_url = admin_url
        self.name = urlsplit(db_url).path.lstrip("/")
        self.own: set[int] = set()
        self.shared: set[int] = set()

    async def find(self) -> None:
        """Add the processes there are now to those already known."""
        conn = await pg.connect(self.admin_url, timeout=10)
        try:
            rows = await conn.fetch("SELECT pid, datname IS NULL AS shared FROM pg_stat_activity "
                                    "WHERE datname = $1 OR datname IS NULL", self.name)
        finally:
            await conn.close()
        for row in rows:
            (self.shared if row["shared"] else self.own).add(int(row["pid"]))

    def read(self, shared: bool) -> dict[int, float]:
        pids = self.shared if shared else self.own
        return {pid: seconds for pid in pids if (seconds := process_cpu(pid)) is not None}


@dataclass(frozen=True)
class Reading:
    """CPU seconds used so far by each party of a drain, and when they were read."""

    at: float
    #: This process (the server and the enqueueing), all threads; the bench's own event counting.
    server: float
    bench: float
    #: (on a CPU, waiting for one) by label: the server's event loop and database thread, each
    #: worker's main thread ("worker0", …).
    threads: Mapping[str, tuple[float, float]]
    #: Each worker process, all threads.
    workers: tuple[float, ...]
    #: By pid: PostgreSQL backends of the drain's database, and the shared PostgreSQL processes.
    database: Mapping[int, float]
    shared: Mapping[int, float]
    machine: float
    commits: int
    writing: float


def _spent(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    # A process first seen at the end started within the window: all of its CPU is the drain's.
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass(frozen=True)
class Usage:
    """CPU seconds each party spent between two readings (the drain's window) and the window's
    length. `database` and `shared` are None on SQLite, where the database is this process's
    database thread and counted in `server`."""

    jobs: int
    wall: float
    server: float
    threads: Mapping[str, tuple[float, float]]
    workers: tuple[float, ...]
    database: float | None
    shared: float | None
    machine: float
    commits: int
    writing: float

    @classmethod
    def between(cls, start: Reading, end: Reading, jobs: int, *, postgres: bool) -> Usage:
        bench = end.bench - start.bench
        threads = {label: (ran - start.threads[label][0], waited - start.threads[label][1])
                   for label, (ran, waited) in end.threads.items() if label in start.threads}
        ran, waited = threads["server_loop"]
        threads["server_loop"] = (ran - bench, waited)  # the bench's counting ran on the loop
        return cls(jobs=jobs, wall=end.at - start.at, server=end.server - start.server - bench, threads=threads,
                   workers=tuple(b - a for a, b in zip(start.workers, end.workers, strict=True)),
                   database=_spent(start.database, end.database) if postgres else None,
                   shared=_spent(start.shared, end.shared) if postgres else None,
                   machine=end.machine - start.machine, commits=end.commits - start.commits,
                   writing=end.writing - start.writing)

    @property
    def total(self) -> float:
        return self.server + sum(self.workers) + (self.database or 0.0) + (self.shared or 0.0)

    def summary(self) -> dict[str, float]:
        """Per job (µs) and per wall second (cores): what the figures and the JSON show."""
        def per_job(seconds: float | None) -> float:
            return 0.0 if seconds is None else seconds / self.jobs * 1e6

        def busiest(prefix: str, index: int) -> float:
            return max((times[index] for label, times in self.threads.items() if label.startswith(prefix)),
                       default=0.0) / self.wall

        return {"wall_s": self.wall, "worker_us": per_job(sum(self.workers)), "server_us": per_job(self.server),
                "server_loop_us": per_job(self.threads["server_loop"][0]),
                "server_db_us": per_job(self.threads.get("server_db", (0.0, 0.0))[0]),
                "database_us": per_job(self.database), "database_shared_us": per_job(self.shared),
                "total_us": per_job(self.total),
                "worker_process_core": max(self.workers, default=0.0) / self.wall,
                "worker_loop_core": busiest("worker", 0), "worker_loop_wait": busiest("worker", 1),
                "server_process_core": self.server / self.wall,
                "server_loop_core": busiest("server_loop", 0), "server_loop_wait": busiest("server_loop", 1),
                "server_db_core": busiest("server_db", 0), "server_db_wait": busiest("server_db", 1),
                "drain_cores": self.total / self.wall, "machine_cores": self.machine / self.wall,
                "other_cores": max(0.0, self.machine - self.total) / self.wall,
                "jobs_per_commit": self.jobs / max(1, self.commits),
                "transaction_ms": self.writing / max(1, self.commits) * 1e3, "writer_busy": self.writing / self.wall}


class Meter:
    """Takes a drain's `Reading`s: this process and its threads, the workers and their main threads
    through /proc, the PostgreSQL processes (with `--store postgres`) through /proc after finding
    them in pg_stat_activity."""

    def __init__(self, app: App, span: Span, workers: Sequence[WorkerProcess], database: Database | None) -> None:
        self.app = app
        self.transactions = Transactions(app)
        self.span = span
        self.pids = [worker.process.pid for worker in workers]
        self.threads = server_threads()
        self.database = database

    async def prepare(self) -> None:
        """Find the PostgreSQL processes before the window opens (the query is not the drain's)."""
        if self.database is not None:
            await self.database.find()

    async def read(self, *, last: bool = False) -> Reading:
        """A reading, taken at once; at the `last` one, processes that started since `prepare` are
        looked for after this process and the workers are read, so the query is outside the window."""
        at, server, bench = time.perf_counter(), time.process_time(), self.span.cpu
        threads = {label: self._times(os.getpid(), tid) for label, tid in self.threads.items()}
        threads.update({f"worker{number}": self._times(pid, pid) for number, pid in enumerate(self.pids)})
        workers = tuple(self._process(pid) for pid in self.pids)
        machine, commits = machine_busy(), self.app.writer.commits
        database: dict[int, float] = {}
        shared: dict[int, float] = {}
        if self.database is not None:
            database, shared = self.database.read(False), self.database.read(True)
            if last:
                await self.database.find()
                database = {**self.database.read(False), **database}
                shared = {**self.database.read(True), **shared}
        return Reading(at, server, bench, threads, workers, database, shared, machine, commits,
                       self.transactions.busy(at))

    @staticmethod
    def _times(pid: int, thread: int) -> tuple[float, float]:
        if (times := thread_times(pid, thread)) is None:
            raise Failed(f"thread {thread} of process {pid} ended during the drain")
        return times

    @staticmethod
    def _process(pid: int) -> float:
        if (seconds := process_cpu(pid)) is None:
            raise Failed(f"worker process {pid} exited during the drain")
        return seconds


class Span:
    """From the first enqueue to the `jobs`-th SUCCEEDED event, as the hub publishes them. `cpu`: the
    CPU seconds its own counting took (the bench's, not the server's)."""

    def __init__(self, app: App, jobs: int) -> None:
        self.jobs, self.done, self.last_at, self.cpu = jobs, 0, 0.0, 0.0
        self.finished = asyncio.Event()
        app.hub.add_listener(self._published)

    def _published(self, events: Sequence[Event]) -> None:
        began = time.thread_time()
        done = sum(1 for event in events if event.type is EventType.SUCCEEDED)
        if done:
            self.done += done
            self.last_at = time.perf_counter()
            if self.done >= self.jobs:
                self.finished.set()
        self.cpu += time.thread_time() - began


@dataclass(frozen=True)
class Drained:
    """One drain: its rate and the CPU it took."""

    rate: float
    usage: Usage


async def _drain(run: Run, kind: str, workers: int) -> Drained:
    s = run.settings
    db = await run.db(f"remote-drain-{workers}")
    app = make_app(s, db)
    span = Span(app, s.drain_jobs)
    await start_app(app)
    started: list[WorkerProcess] = []
    try:
        for number in range(workers):
            started.append(await WorkerProcess.start(f"127.0.0.1:{app.port}", f"bench-{number}"))
        meter = Meter(app, span, started, Database(s.pg_url, db) if s.postgres else None)
        await meter.prepare()
        start = await meter.read()
        now = time.time()
        for first in range(0, s.drain_jobs, BATCH):
            count = min(BATCH, s.drain_jobs - first)
            await app.service.enqueue([NewJob("default", kind, b"x", 5, now, 1, 0.0, ("run",))] * count)
        await bounded(span.finished.wait(), 60 + s.drain_jobs / 200, f"{span.done} of {s.drain_jobs} jobs drained")
        end = await meter.read(last=True)
        usage = Usage.between(start, end, s.drain_jobs, postgres=s.postgres)
        return Drained(s.drain_jobs / (span.last_at - start.at), usage)
    finally:
        for worker in started:
            await worker.stop()
        await stop_app(app)


async def _pickup(run: Run) -> list[float]:
    s = run.settings
    app = make_app(s, await run.db("remote-pickup"))
    committed: dict[str, float] = {}
    results: dict[str, bytes] = {}
    finished = asyncio.Event()

    def published(events: Sequence[Event]) -> None:
        for event in events:
            if event.kind != PROBE:
                continue
            if event.type is EventType.ENQUEUED:
                committed[event.job_id] = app.writer.last_commit_at
            elif event.type is EventType.SUCCEEDED and event.job is not None:
                results[event.job_id] = event.job.phases[0].result
                finished.set()

    app.hub.add_listener(published)
    await start_app(app)
    worker = None
    samples: list[float] = []
    try:
        worker = await WorkerProcess.start(f"127.0.0.1:{app.port}", "bench-pickup")
        for sample in range(s.pickup_samples + 10):
            finished.clear()
            (result,) = await app.service.enqueue([NewJob("default", PROBE, b"", 5, time.time(), 1, 0.0, ("run",))])
            await bounded(finished.wait(), 5, "probe job finish")
            job_id = result.job.id
            if sample >= 10:  # the first few warm both sides up
                samples.append((float(results[job_id]) - committed[job_id]) * 1000)
    finally:
        if worker is not None:
            await worker.stop()
        await stop_app(app)
    return samples


def _cpu(drains: Sequence[Drained]) -> dict[str, float]:
    """The median over the rounds of each entry of the drains' CPU summaries."""
    summaries = [drained.usage.summary() for drained in drains]
    return {key: round(median([summary[key] for summary in summaries]), 3) for key in summaries[0]}


def _parts(cpu: Mapping[str, float], *, postgres: bool) -> str:
    """Where a drain's CPU per job goes, for a figure's note."""
    parts = [f"worker {cpu['worker_us']:,.0f}"] if cpu["worker_us"] else []
    threads = f"event loop {cpu['server_loop_us']:,.0f}"
    if not postgres:
        threads += f", database thread {cpu['server_db_us']:,.0f}"
    parts.append(f"server {cpu['server_us']:,.0f} ({threads})")
    if postgres:
        parts.append(f"PostgreSQL {cpu['database_us']:,.0f} + {cpu['database_shared_us']:,.0f} shared")
    return " + ".join(parts) + " µs"


def bound(cpu: Mapping[str, float], cores: int) -> str:
    """What limits a drain: a thread near a whole core limits its process (one thread runs Python
    at a time), a write transaction always in flight means the drain waits for the one writer, and
    failing both, the machine's cores when they were all busy."""
    if cpu["worker_loop_core"] >= SATURATED:
        return f"worker-bound: its main thread {cpu['worker_loop_core']:.0%} of a core"
    server = [f"{what} {cpu[key]:.0%}" for key, what in (
        ("server_loop_core", "event loop"), ("server_db_core", "database thread"),
        ("writer_busy", "a write transaction in flight")) if cpu[key] >= SATURATED]
    if server:
        return "server-bound: " + ", ".join(server)
    if cpu["machine_cores"] >= SATURATED * cores:
        return f"CPU-bound: the {cores} cores {cpu['machine_cores'] / cores:.0%} busy"
    threads = f"server event loop {cpu['server_loop_core']:.0%}"
    if cpu["server_db_core"]:
        threads += f" + database thread {cpu['server_db_core']:.0%}"
    return f"not worker-bound (worker {cpu['worker_loop_core']:.0%}); nothing saturated: {threads} of a core"


def _rounds(drains: Sequence[Drained]) -> dict[str, Any]:
    return {"rounds": [round(drained.rate) for drained in drains],
            "cpu_rounds": [{key: round(value, 3) for key, value in drained.usage.summary().items()}
                           for drained in drains]}


def _add_drains(run: Run, local: Sequence[Drained], one: Sequence[Drained], two: Sequence[Drained]) -> None:
    s = run.settings
    note = f"median of {s.drain_rounds}" if s.drain_rounds > 1 else ""
    rate = {name: median([d.rate for d in drains]) for name, drains in (("local", local), ("one", one), ("two", two))}
    run.add(Figure("remote_drain_1", f"Remote drain of {s.drain_jobs:,} noop jobs, 1 worker process", "jobs/s",
                   rate["one"], rate["local"], "in-process drain, same procedure",
                   (Target(REMOTE_SHARE, of_floor=True),), note=note,
                   extra={**_rounds(one), "floor_rounds": [round(d.rate) for d in local],
                          "floor_cpu_rounds": _rounds(local)["cpu_rounds"]}))
    run.add(Figure("remote_drain_2", "  the same with 2 worker processes", "jobs/s", rate["two"], rate["one"],
                   "1 worker process, above", (Target(TWO_WORKERS, of_floor=True),), note=note,
                   extra=_rounds(two)))
    _add_cpu(run, _cpu(local), _cpu(one), _cpu(two), rate["one"], _paired(one, two))


def _paired(one: Sequence[Drained], two: Sequence[Drained]) -> list[dict[str, float]]:
    """Per round, the cores a two-worker drain at twice the one-worker rate would need (at the
    two-worker drain's CPU per job), beside how busy the machine was with other work: the round
    where the one-worker drain got the most CPU says the most."""
    return [{"one_rate": round(a.rate), "one_drain_cores": round(a.usage.total / a.usage.wall, 3),
             "one_other_cores": round(a.usage.summary()["other_cores"], 3),
             "two_total_us": round(b.usage.total / b.usage.jobs * 1e6, 1),
             "cores_for_2x": round(2 * a.rate * b.usage.total / b.usage.jobs, 3)}
            for a, b in zip(one, two, strict=True)]


def _add_cpu(run: Run, local: dict[str, float], one: dict[str, float], two: dict[str, float],
             one_rate: float, paired: list[dict[str, float]]) -> None:
    """CPU per job of each drain, the ceiling the machine's cores put on the two-worker drain, and
    what bounds the one-worker drain."""
    postgres, cores = run.settings.postgres, len(CORES)
    cpu = {"in_process": local, "one_worker": one, "two_workers": two}
    run.add(Figure("remote_cpu_1", "  1 worker: CPU per job, all processes", "µs/job", one["total_us"],
                   local["total_us"], "in-process drain, all processes",
                   note=f"{_parts(one, postgres=postgres)}; in-process: {_parts(local, postgres=postgres)}",
                   extra={"cpu": cpu, "postgres_counted": postgres}))
    run.add(Figure("remote_cpu_2", "  2 workers: CPU per job, all processes", "µs/job", two["total_us"],
                   one["total_us"], "1 worker process, above", note=_parts(two, postgres=postgres)))
    ceiling = cores / two["total_us"] * 1e6
    needed = 2 * one_rate * two["total_us"] / 1e6
    most = max(paired, key=lambda pair: pair["cores_for_2x"])
    run.add(Figure("remote_ceiling_2", f"  2 workers: ceiling, {cores} cores / CPU per job", "jobs/s", ceiling,
                   one_rate, "1 worker process, above",
                   note=f"2× needs {needed:.1f} cores, up to {most['cores_for_2x']:.1f} in a round; the drain "
                        f"used {two['drain_cores']:.2f}, others {two['other_cores']:.2f}",
                   extra={"cores": cores, "ratio_ceiling": round(ceiling / one_rate, 3),
                          "cores_for_2x": round(needed, 3), "drain_cores": two["drain_cores"],
                          "other_cores": two["other_cores"], "machine_cores": two["machine_cores"],
                          "rounds": paired}))
    run.add(Figure("remote_worker_busy_1", "  1 worker: worker main thread, share of a core", "% core",
                   one["worker_loop_core"] * 100,
                   note=f"process {one['worker_process_core']:.0%}, waited for a CPU {one['worker_loop_wait']:.0%}"))
    database = f", database thread {one['server_db_core']:.0%}" if not postgres else ""
    run.add(Figure("remote_server_busy_1", "  1 worker: server event loop, share of a core", "% core",
                   one["server_loop_core"] * 100,
                   note=f"waited for a CPU {one['server_loop_wait']:.0%}{database}, process "
                        f"{one['server_process_core']:.0%}"))
    verdict = bound(one, cores)
    run.add(Figure("remote_writer_busy_1", "  1 worker: a write transaction in flight", "% time",
                   one["writer_busy"] * 100,
                   note=f"{one['jobs_per_commit']:.0f} jobs per commit, {one['transaction_ms']:.2f} ms each; "
                        f"{verdict}", extra={"bound": verdict}))


async def measure(run: Run) -> None:
    s = run.settings
    local: list[Drained] = []
    one: list[Drained] = []
    two: list[Drained] = []
    drains = [(local, "noop", 0), (one, NOOP, 1), (two, NOOP, 2)]
    for number in range(s.drain_rounds):
        for results, kind, workers in drains if number % 2 == 0 else drains[::-1]:
            results.append(await _drain(run, kind, workers))
    _add_drains(run, local, one, two)
    echo = await run.echo(1)
    pickup = await _pickup(run)
    extra = {"samples": len(pickup), "mean_ms": statistics.fmean(pickup), "max_ms": max(pickup)}
    run.add(Figure("remote_pickup_p50", "Pickup with an idle remote worker p50, commit → handler", "ms",
                   percentile(pickup, 0.5), echo["p50_ms"], "gRPC echo round trip p50",
                   (Target(PICKUP_P50_MS, at_most=True),), extra=extra))
    run.add(Figure("remote_pickup_p99", "Pickup with an idle remote worker p99", "ms", percentile(pickup, 0.99),
                   echo["p50_ms"], "gRPC echo round trip p50", (Target(PICKUP_P99_MS, at_most=True),)))

