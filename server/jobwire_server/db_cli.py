"""The database commands of `jobwire`: `migrate` (mounted by `jobwire_server.cli`).

It prints for people on stdout and one `jobwire: error: …` line on stderr when they fail: exit
status 1 for a database that cannot be opened or written, or a schema newer than this jobwire; 2 for
bad command-line input.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from jobwire_server.config import ConfigError, build_config

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


def add_database_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` to the ``jobwire`` command's parser."""
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
