"""The database commands of `jobwire`: `migrate` and `copy` (mounted by `jobwire_server.cli`).

Both print for people on stdout and one `jobwire: error: …` line on stderr when they fail: exit
status 1 for a database that cannot be opened, read or written, a schema newer than this jobwire, or
a copy that was refused; 2 for bad command-line input.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from jobwire_server.config import ConfigError, build_config, is_postgres_url

EXIT_FAILURE = 1
EXIT_USAGE = 2

_MIGRATE_EPILOG = """\
examples:
  jobwire migrate --db ./jobwire.db
  jobwire migrate --db postgresql://jobwire@db.internal:5432/jobwire --dry-run

A server migrates its database when it starts, too; run this first to migrate once, before a rolling
upgrade of replicas or from a deployment step, and to see what is applied. A database whose schema is
newer than this jobwire is refused (exit status 1), as `jobwire serve` refuses it.
"""

_COPY_EPILOG = """\
example:
  jobwire copy --from /var/lib/jobwire/jobwire.db --to postgresql://jobwire@db.internal:5432/jobwire

Stop the server that uses the SQLite file first: the copy is a snapshot, and what that server does
afterwards is not in it. The target is migrated to this jobwire's schema and must hold no jobwire
rows. Everything is written in one transaction and checked before the commit (rows per table, jobs
and deliveries per state), so a failed or refused copy leaves the target as it was. Jobs RUNNING in
the source keep their leases: a server on the target requeues them once the leases run out.
"""


def add_database_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` and ``copy`` to the ``jobwire`` command's parser."""
    migrate = commands.add_parser(
        "migrate", help="apply database migrations without serving",
        description="Bring the database's schema to this jobwire's version, as `jobwire serve` does at start, "
                    "and print the version before and after.",
        epilog=_MIGRATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    migrate.add_argument("--db", metavar="PATH|URL",
                         help="a SQLite file (created when missing) or postgresql://USER@HOST[:PORT]/DB "
                              "[env JOBWIRE_DB]")
    migrate.add_argument("--dry-run", action="store_true", help="only say what would be applied; write nothing")
    migrate.set_defaults(func=_migrate)

    copy = commands.add_parser(
        "copy", help="copy a SQLite database into PostgreSQL",
        description="Copy every job, phase, event, request id, webhook delivery and delivery attempt of a "
                    "SQLite jobwire database into an empty PostgreSQL database, then check the copy.",
        epilog=_COPY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    copy.add_argument("--from", dest="source", metavar="PATH", required=True,
                      help="the SQLite database: a path, or sqlite:PATH (opened read-only)")
    copy.add_argument("--to", dest="target", metavar="URL", required=True,
                      help="the PostgreSQL database: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=...]")
    copy.add_argument("--batch", type=_batch, default=1000, metavar="N",
                      help="rows read and written at a time (default 1000)")
    copy.set_defaults(func=_copy)


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _error(message: str) -> None:
    print(f"jobwire: error: {message}", file=sys.stderr)


def _database(value: str, source: str) -> str:
    """The `--db` value checked as `jobwire serve` checks it; raises ConfigError."""
    return build_config({"db": value}, {"db": source}).db


def _migrate(args: argparse.Namespace) -> int:
    from jobwire_server.domain.errors import SchemaTooNew  # noqa: PLC0415 - keeps `jobwire --help` fast
    from jobwire_server.migrating import migrate  # noqa: PLC0415
    from jobwire_server.store.base import StoreError  # noqa: PLC0415

    given, source = (args.db, "--db") if args.db else (os.environ.get("JOBWIRE_DB", ""), "env JOBWIRE_DB")
    if not given:
        _error("name the database with --db PATH|URL (or JOBWIRE_DB)")
        return EXIT_USAGE
    try:
        db = _database(given, source)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        result = asyncio.run(migrate(db, dry_run=args.dry_run))
    except (StoreError, SchemaTooNew) as exc:
        _error(str(exc))
        return EXIT_FAILURE
    print(result.describe())
    return 0


def _copy(args: argparse.Namespace) -> int:
    from jobwire_server.copying import CopyRefused, copy_database, source_path  # noqa: PLC0415
    from jobwire_server.domain.errors import SchemaTooNew  # noqa: PLC0415
    from jobwire_server.store.base import StoreError  # noqa: PLC0415

    source = source_path(args.source)
    if is_postgres_url(source) or "://" in source:
        _error(f"--from names the SQLite database to copy (PATH or sqlite:PATH), got {args.source!r}")
        return EXIT_USAGE
    if not is_postgres_url(args.target):
        _error(f"--to names the PostgreSQL database to copy into (postgresql://USER@HOST[:PORT]/DB), "
               f"got {args.target!r}")
        return EXIT_USAGE
    try:
        target = _database(args.target, "--to")
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE

    def on_table(table: str, rows: int) -> None:
        print(f"  {table:<18} {rows:>10} rows", flush=True)

    from jobwire_server.store.postgres.store import display_url  # noqa: PLC0415

    print(f"copying {source} into {display_url(target)}", flush=True)
    try:
        report = asyncio.run(copy_database(source, target, batch=args.batch, on_table=on_table))
    except (StoreError, SchemaTooNew, CopyRefused) as exc:
        _error(str(exc))
        return EXIT_FAILURE
    if report.migrated:
        print(f"the target was migrated first, from schema version {report.target_version} to "
              f"{report.migrated[-1]}")
    total = sum(report.census.rows.values())
    print(f"copied {total} rows in {len(report.census.rows)} tables in {report.seconds:.1f} s")
    for table, states in report.census.states.items():
        if states:
            print(f"  {table} by state: " + ", ".join(f"{state} {n}" for state, n in sorted(states.items())))
    print("verified: the target holds as many rows as the source in every table, and as many jobs and "
          "deliveries in each state")
    if report.running:
        print(f"note: {report.running} job(s) were RUNNING in the source; they keep their leases, and a server "
              "on the target requeues them once those run out (as after a crash)")
    if report.live_leases:
        print(f"warning: {report.live_leases} of them held a lease that had not run out yet: if a server still "
              "runs on the source, stop it; what it did after the copy is not in the target", file=sys.stderr)
    return 0
