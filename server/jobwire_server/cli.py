"""The server half of the `jobwire` command: `jobwire serve`, `jobwire hash-token`, and the database
commands `jobwire migrate` and `jobwire copy` (in `db_cli`).

The command itself is :func:`jobwire.cli.main`, which mounts these when the server extra is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence

from jobwire_server.config import ConfigError, ServerConfig, add_serve_arguments, load_config
from jobwire_server.db_cli import add_database_commands
from jobwire_server.logs import configure_logging

log = logging.getLogger("jobwire")

EXIT_USAGE = 2
EXIT_FAILURE = 1


def add_server_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``hash-token``, ``migrate`` and ``copy`` to the ``jobwire`` command's parser (built by
    :mod:`jobwire.cli`)."""
    serve = commands.add_parser(
        "serve", help="run the service",
        description="Run the jobwire service. Settings come from flags, then JOBWIRE_* environment variables, "
                    "then the TOML file given by --config, then defaults. Modules named by --handlers are "
                    "imported from the current directory first, then from the environment.",
        epilog="Tracing is configured by the standard OpenTelemetry variables, not by flags: "
               "OTEL_TRACES_EXPORTER=otlp|console|none (unset: otlp when the exporter from the "
               "'jobwire[otlp]' extra is installed, otherwise off), OTEL_EXPORTER_OTLP_ENDPOINT, "
               "OTEL_EXPORTER_OTLP_PROTOCOL=grpc|http/protobuf, OTEL_SERVICE_NAME (default jobwire), "
               "OTEL_TRACES_SAMPLER, OTEL_SDK_DISABLED. See docs/operations.md.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)
    hash_token = commands.add_parser(
        "hash-token", help="print the sha256 to store in the tokens file for a bearer token",
        description="Read a bearer token from standard input (or a no-echo prompt on a terminal) and print "
                    "the hex SHA-256 digest to store as `sha256` in the tokens file. The file never holds the "
                    "token itself.",
        epilog="example:\n"
               "  TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\n"
               "  printf '%s' \"$TOKEN\" | jobwire hash-token\n\n"
               "then add to the tokens file (--tokens-file):\n"
               "  [[token]]\n"
               "  name = \"ci\"\n"
               "  sha256 = \"<the printed digest>\"\n"
               "  scopes = [\"jobs:read\", \"jobs:write\"]   # or [\"admin\"]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hash_token.set_defaults(func=_hash_token)
    add_database_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobwire_server``: the same ``jobwire`` command as the installed script."""
    from jobwire.cli import main as jobwire_main  # noqa: PLC0415 - the command is defined by the client package

    return jobwire_main(argv)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(vars(args), config_file=args.config)
    except ConfigError as exc:
        print(f"jobwire: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log_format, config.log_level)
    _import_from_cwd()
    exposed = config.exposed()
    if exposed and not config.tokens_file and not config.allow_unauthenticated:
        print(f"jobwire: error: refusing to listen on {exposed[0]} without authentication: configure "
              "--tokens-file, or pass --allow-unauthenticated if the network is trusted", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_serve_until_signalled(config))


def _import_from_cwd() -> None:
    """Let ``--handlers myapp.jobs`` find ``./myapp``, as uvicorn and ``celery -A`` do."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _hash_token(args: argparse.Namespace) -> int:
    from jobwire_server.api.auth import TOKEN_PATTERN, hash_token  # noqa: PLC0415 - keeps `jobwire --help` fast

    secret = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        print("jobwire: error: no token given on standard input", file=sys.stderr)
        return EXIT_USAGE
    if TOKEN_PATTERN.fullmatch(secret) is None:
        print("jobwire: error: a bearer token may hold only letters, digits and -._~+/ (then '=' padding), "
              "as RFC 6750 allows; make one with secrets.token_urlsafe(32)", file=sys.stderr)
        return EXIT_USAGE
    print(hash_token(secret))
    return 0


async def _serve_until_signalled(config: ServerConfig) -> int:
    from jobwire_server.app import App, StartupError  # noqa: PLC0415 - keeps `jobwire --help` fast
    from jobwire_server.domain.errors import SchemaTooNew  # noqa: PLC0415
    from jobwire_server.handlers.registry import HandlerImportError  # noqa: PLC0415
    from jobwire_server.store.base import StoreError  # noqa: PLC0415

    try:
        app = App(config)
        await app.start()
    except (StartupError, StoreError, SchemaTooNew, HandlerImportError) as exc:
        print(f"jobwire: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    gc.freeze()  # what start-up built (modules, handlers, settings) lives as long as the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining (grace %.1fs)", config.shutdown_grace)
    await app.stop()
    # Exit here rather than return: a handler that ignored cancellation may still hold a task or
    # a thread, and asyncio.run would wait for it, keeping a stopped server alive. Everything is
    # committed (or fenced by its attempt) and the store is closed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
