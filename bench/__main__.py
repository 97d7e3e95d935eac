"""`make bench`: every figure of the performance targets, each beside its floor measured in the
same run, and the ratio.

The server is the real App (gRPC, SQLite in a scratch directory, synchronous=FULL and concurrency
100 unless told otherwise) hosted in this process; load comes from `bench.load`, a grpc.aio client
in its own process, so client and server each get a core. Floors: a trivial grpc.aio echo server
hosted here the same way (bench/echo.py), and plain-sqlite3 loops writing the same rows
(bench/floors.py). The table goes to stdout, everything to bench/results/latest.json.

With `--store postgres` every server gets a fresh database on the PostgreSQL server of `--pg-url`
instead (created for it, dropped after); the drain's floor is then pgqueuer draining the same jobs
on the same server (bench/pgqueuer_floor.py), and three more measures run: `pgqueuer` (that floor
alone), `replicas` (two `jobwire serve` processes on one database) and `crosswatch` (an event
committed on one replica, seen by a watcher on another).
See docs/performance.md for what each figure means and what bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from jobwire_server.config import SYNCHRONOUS_MODES

from bench import bulk, crosswatch, drain, enqueue, fanout, idle, pg, pickup, remote, replicas, search
from bench.common import ROOT, STORES, Figure, Refused, Run, ServerLog, Settings

RESULTS = Path(__file__).parent / "results"
#: Longest one measure may run before it is abandoned (its servers and clients are ended).
MEASURE_LIMIT = 300.0

MEASURES: dict[str, Callable[[Run], Awaitable[None]]] = {
    "enqueue": enqueue.measure,
    "batch": enqueue.measure_batch,
    "produce": drain.measure_produce,
    "drain": drain.measure_drain,
    "pickup": pickup.measure,
    "remote": remote.measure,
    "fanout": fanout.measure,
    "idle": idle.measure,
    "bulk": bulk.measure,
    "search": search.measure,
    "pgqueuer": drain.measure_pgqueuer,
    "replicas": replicas.measure,
    "crosswatch": crosswatch.measure,
}
#: Measures of the PostgreSQL bench only: not in a SQLite run unless asked for (`pgqueuer` needs a
#: PostgreSQL server, whatever the store), and refused on SQLite (`replicas`, `crosswatch`).
POSTGRES_MEASURES = ("pgqueuer", "replicas", "crosswatch")
NEEDS_POSTGRES_STORE = ("replicas", "crosswatch")

QUICK = Settings(seconds=1.5, warmup=0.3, produce_seconds=2.0, drain_jobs=10_000, rounds=1, drain_rounds=1,
                 pickup_samples=200,
                 batch_calls=10, fanout=(1000, 10_000), idle_seconds=2.0, replica_rounds=1, watch_samples=100,
                 search_jobs=200_000)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, list[str], Path]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and one round each: about a minute instead of two or three")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these measures: {', '.join(MEASURES)}")
    parser.add_argument("--concurrency", type=int, help="server job slots (default 100, the server's default)")
    parser.add_argument("--synchronous", choices=SYNCHRONOUS_MODES, type=str.upper,
                        help="SQLite synchronous mode of the server and the sqlite3 floors (default FULL)")
    parser.add_argument("--seconds", type=float, help="measured seconds per enqueue/echo rate (default 3)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each rate (default 0.5)")
    parser.add_argument("--produce-seconds", type=float, help="seconds the producer enqueues while draining (4)")
    parser.add_argument("--jobs", type=int, dest="drain_jobs", help="prefilled jobs per drain (default 20000)")
    parser.add_argument("--rounds", type=int, help="rounds of (echo, enqueue) per in-flight count; median (default 3)")
    parser.add_argument("--drain-rounds", type=int,
                        help="rounds of (sqlite3 floor, untraced, traced) prefilled drains; median (default 5)")
    parser.add_argument("--claim-batch", type=int, help="jobs per transaction of the sqlite3 drain floor (100)")
    parser.add_argument("--samples", type=int, dest="pickup_samples", help="pickup latency samples (default 500)")
    parser.add_argument("--batch-size", type=int, help="requests per EnqueueBatch call (default 1000)")
    parser.add_argument("--batch-calls", type=int, help="EnqueueBatch calls measured (default 20)")
    parser.add_argument("--fanout", help="watch stream counts, comma-separated (default 1000,10000)")
    parser.add_argument("--streams-per-channel", type=int, help="watch streams per client connection (1000)")
    parser.add_argument("--idle-seconds", type=float, help="seconds the idle server is watched (default 5)")
    parser.add_argument("--store", choices=STORES,
                        help="where the servers keep their jobs: sqlite (default: a file each) or postgres "
                             "(a fresh database each on the server of --pg-url; adds the pgqueuer floor and the "
                             "replicas and crosswatch measures)")
    parser.add_argument("--pg-url", help=f"PostgreSQL URL scratch databases are created through; its database "
                                         f"is only connected to (default {pg.DEFAULT_ADMIN_URL})")
    parser.add_argument("--pgq-consumers", type=int,
                        help="pgqueuer floor: QueueManagers, one connection each (default 1, as `pgq run`)")
    parser.add_argument("--pgq-batch", type=int, help="pgqueuer floor: jobs per dequeue (default 10, as `pgq run`)")
    parser.add_argument("--replica-rounds", type=int, help="rounds of (one, two) replica drains; median (default 3)")
    parser.add_argument("--watch-samples", type=int, help="cross-replica watch latency probes (default 300)")
    parser.add_argument("--bulk-jobs", type=int, help="jobs CancelJobs cancels while enqueues go on (default 10000)")
    parser.add_argument("--search-jobs", type=int, help="jobs ListJobs searches (default 1000000; --quick 200000)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="results file")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    given = {key: value for key, value in vars(args).items()
             if value is not None and key in Settings.__dataclass_fields__ and key != "fanout"}
    if args.fanout:
        given["fanout"] = tuple(int(n) for n in args.fanout.split(",") if n.strip())
    settings = replace(settings, **given)
    if args.only:
        only = [name.strip() for name in args.only.split(",")]
    else:
        only = [name for name in MEASURES if settings.postgres or name not in POSTGRES_MEASURES]
    unknown = [name for name in only if name not in MEASURES]
    if unknown:
        parser.error(f"unknown measure {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    if not settings.postgres and (refused := [name for name in only if name in NEEDS_POSTGRES_STORE]):
        parser.error(f"{', '.join(refused)} need --store postgres")
    return settings, only, args.output


def _tree() -> dict[str, Any]:
    """The commit measured, and whether the server's sources differ from it."""
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "server_modified": bool(git("status", "--porcelain", "server"))}


async def _postgres(settings: Settings) -> dict[str, str]:
    """The PostgreSQL server's settings that bound its commits (and proof it answers)."""
    return {"url": pg.redact(settings.pg_url),
            **await pg.server_settings(settings.pg_url, ("server_version", "synchronous_commit", "fsync"))}


async def run_all(settings: Settings, only: list[str]) -> dict[str, Any]:
    postgres = await _postgres(settings) if settings.postgres or "pgqueuer" in only else {}
    log = ServerLog()
    logging.getLogger("jobwire").addHandler(log)
    failures: dict[str, str] = {}
    server_log: dict[str, list[str]] = {}
    timings: dict[str, float] = {}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-") as workdir:
        run = Run(settings, workdir)
        for name in only:
            print(f"… {name}", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                await asyncio.wait_for(MEASURES[name](run), MEASURE_LIMIT)
            except Refused as exc:  # one line says it all
                failures[name] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            finally:
                await _drop_databases(run, name, failures)
            timings[name] = round(time.perf_counter() - began, 1)
            if records := log.take():
                server_log[name] = records[:50]
    return {
        "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
                 "machine": platform.machine(), "cpus": os.cpu_count(), **_tree(), "load_before": load_before,
                 "load_after": os.getloadavg(), "runtime_s": round(time.perf_counter() - started, 1),
                 "measure_s": timings, "settings": asdict(settings), "postgres": postgres},
        "figures": [figure.as_json() for figure in run.figures],
        "failures": failures,
        "server_log": server_log,
    }


async def _drop_databases(run: Run, name: str, failures: dict[str, str]) -> None:
    try:
        await run.drop_databases()
    except Exception as exc:
        failures.setdefault(name, f"dropping its scratch databases: {type(exc).__name__}: {exc}")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("ms", "KiB", "% core"):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,.0f}"


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    settings = meta["settings"]
    postgres = meta.get("postgres") or {}
    if settings.get("store") == "postgres":
        store = (f"store=postgres {postgres['server_version'].split()[0]} "
                 f"(synchronous_commit={postgres['synchronous_commit']})")
    else:
        store = f"synchronous={settings['synchronous']}"
    lines = [f"jobwire bench: {meta['cpus']} CPUs, Python {meta['python']}, {store}, "
             f"concurrency={settings['concurrency']}, load average {meta['load_before'][0]:.2f} → "
             f"{meta['load_after'][0]:.2f}, {meta['runtime_s']:.0f} s, commit {meta['commit']}"
             + (" + uncommitted server changes" if meta["server_modified"] else ""),
             "",
             f"{'figure':<50} {'value':>10} {'unit':<7} {'floor':>10}  {'floor is':<34} {'ratio':>6}  "
             f"{'target':<24} result"]
    for data in results["figures"]:
        figure = Figure(**{k: v for k, v in data.items() if k in Figure.__dataclass_fields__ and k != "targets"})
        ratio = "—" if data["ratio"] is None else f"{data['ratio']:.2f}"
        target = ", ".join(data["targets"])
        line = (f"{figure.label:<50} {_number(figure.value, figure.unit):>10} {figure.unit:<7} "
                f"{_number(figure.floor, figure.unit):>10}  {figure.floor_label:<34} {ratio:>6}  {target:<24} "
                f"{data['verdict']}")
        if figure.note:
            line += f"  ({figure.note})"
        lines.append(line.rstrip())
    for name, failure in results["failures"].items():
        lines.append(f"FAILED {name}: {failure}")
    for name, records in results["server_log"].items():
        lines.append(f"server log during {name}: {len(records)} warning(s), first: {records[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings, only, output = parse_args(argv)
    try:
        results = asyncio.run(run_all(settings, only))
    except ConnectionError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(report(results))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {output}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
