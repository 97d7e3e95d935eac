"""What every measure shares: settings, figures with their floors and targets, the App factory,
the store each server gets (a SQLite file, or a scratch PostgreSQL database with `--store
postgres`), the load-client process, and small helpers (percentiles, RSS, waits that cannot hang)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobwire_server.app import App, StartupError
from jobwire_server.config import ConfigError, build_config
from jobwire_server.domain.models import Event
from jobwire_server.domain.states import EventType
from jobwire_server.handlers.registry import Registry
from opentelemetry.sdk.trace import TracerProvider

from bench import pg
from bench.echo import EchoServer

ROOT = Path(__file__).resolve().parent.parent
#: Longest any single wait of the bench may take before it gives up on the measure.
WAIT_LIMIT = 120.0
STORES = ("sqlite", "postgres")


@dataclass(frozen=True)
class Settings:
    """Sizes and knobs of one run (see `python -m bench --help`)."""

    concurrency: int = 100
    synchronous: str = "FULL"
    seconds: float = 3.0
    warmup: float = 0.5
    produce_seconds: float = 4.0
    drain_jobs: int = 20_000
    rounds: int = 3
    drain_rounds: int = 5
    claim_batch: int = 100
    pickup_samples: int = 500
    batch_size: int = 1000
    batch_calls: int = 20
    fanout: tuple[int, ...] = (1000, 10_000)
    streams_per_channel: int = 1000
    idle_seconds: float = 5.0
    #: Where each server keeps its jobs: "sqlite" (a file per server) or "postgres" (a database per server).
    store: str = "sqlite"
    #: PostgreSQL URL the scratch databases are created through (`--store postgres`).
    pg_url: str = pg.DEFAULT_ADMIN_URL
    #: The pgqueuer drain floor: QueueManagers (one connection each) and jobs per dequeue.
    pgq_consumers: int = 1
    pgq_batch: int = 10
    #: Rounds of (one replica, two replicas) prefilled drains; median.
    replica_rounds: int = 3
    #: Probe jobs of the cross-replica watch latency.
    watch_samples: int = 300
    #: Jobs one CancelJobs cancels while enqueues go on (`bulk`), and jobs ListJobs searches (`search`).
    bulk_jobs: int = 10_000
    search_jobs: int = 1_000_000

    @property
    def postgres(self) -> bool:
        return self.store == "postgres"


@dataclass(frozen=True)
class Target:
    """`value` (or `value / floor` when `of_floor`) must be at least / at most `bound`."""

    bound: float
    at_most: bool = False
    of_floor: bool = False

    def met(self, value: float, floor: float | None) -> bool | None:
        if self.of_floor:
            if not floor:
                return None
            value = value / floor
        return value <= self.bound if self.at_most else value >= self.bound

    def __str__(self) -> str:
        sign = "≤" if self.at_most else "≥"
        if self.of_floor:
            return f"{sign} {self.bound:g}× floor"
        return f"{sign} {self.bound:,g}"


@dataclass
class Figure:
    """One measured figure, beside its floor (measured in the same run) and its targets."""

    key: str
    label: str
    unit: str
    value: float
    floor: float | None = None
    floor_label: str = ""
    targets: tuple[Target, ...] = ()
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.value / self.floor if self.floor else None

    @property
    def verdict(self) -> str:
        outcomes = [t.met(self.value, self.floor) for t in self.targets]
        if not outcomes:
            return ""
        if any(o is None for o in outcomes):
            return "?"
        return "PASS" if all(outcomes) else "MISS"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = [str(t) for t in self.targets]
        data["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        data["verdict"] = self.verdict
        return data


class Failed(Exception):
    """A measure could not complete (the server refused, a wait ran out)."""


class Refused(Failed):
    """The server would not start (for instance on a store it does not have); the message says why
    in one line, so no traceback is printed for it."""


# ---------------------------------------------------------------------- helpers


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rss_bytes() -> int:
    """Resident set size of this process (the server), from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


async def bounded(awaitable: Any, limit: float, what: str) -> Any:
    """Await with a deadline; running out raises `Failed` naming what was awaited."""
    try:
        return await asyncio.wait_for(awaitable, limit)
    except TimeoutError:
        raise Failed(f"{what}: no result within {limit:g} s") from None


# ---------------------------------------------------------------------- the server


def make_app(settings: Settings, db: str, *, registry: Registry | None = None,
             tracer_provider: TracerProvider | None = None, **extra: Any) -> App:
    """The real service on `db` (a SQLite file, or a PostgreSQL URL: see `Run.db`), gRPC on a free
    loopback port. Settings the server refuses raise `Refused`."""
    sqlite = {} if settings.postgres else {"synchronous": settings.synchronous}
    try:
        config = build_config({"db": db, "listen": "127.0.0.1:0", "concurrency": settings.concurrency,
                               **sqlite, **extra})
        return App(config, registry=registry, tracer_provider=tracer_provider)
    except (ConfigError, StartupError) as exc:
        raise Refused(f"the server refused db {pg.redact(db)}: {exc}") from None


async def start_app(app: App) -> None:
    """Start the server; a start that fails (on a store the server does not have, say) raises
    `Refused` with the server's own message."""
    try:
        await app.start()
    except Exception as exc:
        db = pg.redact(app.config.db)
        where = "" if db in str(exc) else f" on {db}"
        raise Refused(f"the server did not start{where}: {type(exc).__name__}: {exc}") from None


async def stop_app(app: App) -> None:
    """Stop the server, bounded: a stop that hangs is reported, not waited for forever."""
    await bounded(app.stop(), 60, "server stop")


class Completions:
    """Counts SUCCEEDED events as the hub publishes them (event-driven, no polling) and wakes
    `wait(n)` once n have been seen; `last_at` is the perf_counter of the latest batch."""

    def __init__(self, app: App) -> None:
        self.count = 0
        self.last_at = 0.0
        self._want = 0
        self._reached = asyncio.Event()
        app.hub.add_listener(self._published)

    def _published(self, events: Sequence[Event]) -> None:
        done = sum(1 for event in events if event.type is EventType.SUCCEEDED)
        if done:
            self.count += done
            self.last_at = time.perf_counter()
            if self._want and self.count >= self._want:
                self._reached.set()

    async def wait(self, jobs: int, limit: float) -> None:
        self._want = jobs
        if self.count >= jobs:
            return
        try:
            await asyncio.wait_for(self._reached.wait(), limit)
        except TimeoutError:
            raise Failed(f"{self.count} of {jobs} jobs succeeded within {limit:g} s") from None


#: The line `jobwire serve` logs once it serves (text log format).
SERVING = re.compile(r"jobwire serving on (\S+):(\d+) \(")
#: Seconds a replica gets to stop after SIGTERM before it is killed.
REPLICA_STOP_LIMIT = 30.0


class Replica:
    """One `jobwire serve` process on `db`: a replica with a process of its own, as deployed.
    Flags only (no JOBWIRE_* environment, tracing off), gRPC on a free loopback port read from its
    start-up log line. A start that fails raises `Refused` with the server's own last message."""

    def __init__(self, settings: Settings, db: str, *, name: str, args: Sequence[str] = ()) -> None:
        self.settings = settings
        self.db = db
        self.name = name
        self.args = list(args)
        self.port = 0
        #: perf_counter, and wall-clock time, when its "serving" line was read.
        self.ready_at = 0.0
        self.ready_wall = 0.0
        #: Its WARNING and ERROR log lines (the first 50).
        self.warnings: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, limit: float = 60.0) -> None:
        s = self.settings
        env = {key: value for key, value in os.environ.items() if not key.startswith("JOBWIRE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env["OTEL_TRACES_EXPORTER"] = "none"
        sqlite = [] if s.postgres else ["--synchronous", s.synchronous]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobwire_server", "serve", "--db", self.db, "--listen", "127.0.0.1:0",
            "--http-listen", "off", "--concurrency", str(s.concurrency), *sqlite, "--log-format", "text",
            "--log-level", "info", *self.args,
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20)
        try:
            await self._serving(limit)
        except BaseException:
            await self.stop()
            raise
        self._reader = asyncio.create_task(self._read())

    async def _serving(self, limit: float) -> None:
        """Read its log until it serves; `Refused` with its error line (else its last) if it exits."""
        assert self._proc is not None and self._proc.stderr is not None
        last = ""
        while raw := await bounded(self._proc.stderr.readline(), limit, f"{self.name} start"):
            line = raw.decode(errors="replace").strip()
            if match := SERVING.search(line):
                self.port = int(match.group(2))
                self.ready_at, self.ready_wall = time.perf_counter(), time.time()
                return
            if line and not last.startswith("jobwire: error:"):
                last = line
        code = await bounded(self._proc.wait(), 10, f"{self.name} exit")
        raise Refused(f"{self.name} (jobwire serve --db {pg.redact(self.db)}) exited with status {code}: "
                      f"{last or 'no message'}")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while raw := await self._proc.stderr.readline():
            line = raw.decode(errors="replace").rstrip()
            if (" WARNING " in line or " ERROR " in line) and len(self.warnings) < 50:
                self.warnings.append(line)

    async def stop(self) -> None:
        """SIGTERM (the graceful stop), killed if it is not gone within REPLICA_STOP_LIMIT."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), REPLICA_STOP_LIMIT)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def __aenter__(self) -> Replica:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ServerLog(logging.Handler):
    """Keeps the server's warnings and errors so the report can say what went wrong where."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def take(self) -> list[str]:
        taken, self.records = self.records, []
        return taken


# ---------------------------------------------------------------------- the load client


class LoadClient:
    """One `bench.load` process (or another bench module run the same way, such as the pgqueuer
    floor): a JSON spec in, JSON lines out. `close()` always ends it."""

    def __init__(self, spec: dict[str, Any], *, module: str = "bench.load") -> None:
        self.spec = spec
        self.module = module
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def name(self) -> str:
        return f"load client ({self.spec['mode']})" if self.module == "bench.load" else self.module

    async def __aenter__(self) -> LoadClient:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, json.dumps(self.spec), cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, limit=64 << 20,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.close(kill=exc_type is not None)

    async def line(self, limit: float) -> dict[str, Any]:
        """The client's next JSON line; `Failed` if it reports an error, exits or takes too long."""
        assert self._proc is not None and self._proc.stdout is not None
        raw = await bounded(self._proc.stdout.readline(), limit, self.name)
        if not raw:
            code = await bounded(self._proc.wait(), 10, "load client exit")
            raise Failed(f"{self.name} exited with status {code} without a result")
        data: dict[str, Any] = json.loads(raw)
        if "error" in data:
            raise Failed(f"{self.name}: {data['error']}")
        return data

    async def close(self, *, kill: bool = False) -> None:
        """Let the client exit (killed after 5 s, or at once when `kill`)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if not kill:
            try:
                await asyncio.wait_for(proc.wait(), 5)
                return
            except TimeoutError:
                pass
        proc.kill()
        await asyncio.wait_for(proc.wait(), 5)


async def run_client(spec: dict[str, Any], limit: float, *, module: str = "bench.load") -> dict[str, Any]:
    """Run one load client (or `module`) to its single result line."""
    async with LoadClient(spec, module=module) as client:
        return await client.line(limit)



# ---------------------------------------------------------------------- one run


class Run:
    """State shared by the measures of one run: settings, a scratch directory, the figures, and the
    gRPC echo floor, measured once per in-flight count and reused by the figures that compare to it."""

    def __init__(self, settings: Settings, workdir: str) -> None:
        self.settings = settings
        self.workdir = Path(workdir)
        self.figures: list[Figure] = []
        self._echo: dict[int, dict[str, Any]] = {}
        self._dirs = 0
        self._databases: list[str] = []

    def directory(self, name: str) -> str:
        """A fresh, empty directory for one server or floor."""
        self._dirs += 1
        path = self.workdir / f"{self._dirs:02d}-{name}"
        path.mkdir()
        return str(path)

    async def db(self, name: str, *, template: str | None = None) -> str:
        """What one server's `db` setting is: a SQLite file in a fresh directory, or with `--store
        postgres` a fresh database `jobwire_bench_<pid>_<n>_<name>` (a copy of the database
        `template` when given), dropped by `drop_databases()` after the measure."""
        if not self.settings.postgres:
            return f"{self.directory(name)}/bench.db"
        return self.url(await self.database(name, template=template))

    def url(self, database: str) -> str:
        """The URL of a scratch database (as a server's `db` setting)."""
        return pg.database_url(self.settings.pg_url, database)

    def reserve(self, name: str) -> str:
        """A scratch database name for something else to create (a floor process): dropped by
        `drop_databases()` if it still exists then."""
        self._dirs += 1
        database = pg.scratch_name(f"{self._dirs:02d}_{name.replace('-', '_')}")
        self._databases.append(database)
        return database

    async def database(self, name: str, *, template: str | None = None) -> str:
        """A fresh scratch PostgreSQL database (its name), dropped by `drop_databases()`."""
        database = self.reserve(name)
        try:
            await pg.create_database(self.settings.pg_url, database, template=template)
        except ConnectionError as exc:
            raise Failed(str(exc)) from None
        return database

    async def drop_databases(self) -> None:
        """Drop every scratch database made so far (their servers are stopped by now)."""
        while self._databases:
            await pg.drop_database(self.settings.pg_url, self._databases.pop())

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    async def echo(self, inflight: int, *, fresh: bool = False) -> dict[str, Any]:
        """The gRPC floor with `inflight` calls in flight: the echo server in this process, the
        same load client in its own process. Measured on first use (or when `fresh`), then the
        kept one is reused by the figures that compare to it."""
        if fresh or inflight not in self._echo:
            async with EchoServer() as server:
                result = await run_client(
                    {"mode": "unary", "method": "echo", "target": f"127.0.0.1:{server.port}",
                     "inflight": inflight, "seconds": self.settings.seconds, "warmup": self.settings.warmup},
                    self.settings.seconds + self.settings.warmup + 60)
            if fresh:
                return result
            self._echo[inflight] = result
        return self._echo[inflight]

    def keep_echo(self, inflight: int, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Keep the median of several echo measurements (by rate) as the floor for `inflight`."""
        ordered = sorted(results, key=lambda r: float(r["rate"]))
        kept = {**ordered[len(ordered) // 2], "rate": median([float(r["rate"]) for r in results])}
        self._echo[inflight] = kept
        return kept
