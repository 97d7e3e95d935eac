"""`jobwire worker`: run the kinds of handler modules as a remote worker of a jobwire server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from jobwire.client import TLSConfig
from jobwire.worker.runtime import DEFAULT_SLOTS, Worker, WorkerRefused

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_DESCRIPTION = """\
Connect to a jobwire server and run the phases of every Kind defined in the handler modules, as
`jobwire serve --handlers` would run them inside the server. The worker declares its kinds (the
server then accepts jobs of them), takes at most --slots jobs at once, reconnects with jittered
backoff when the connection drops, and on SIGTERM (or Ctrl-C) drains: it takes no new jobs, lets
running ones finish for --drain-timeout seconds, gives the rest back and exits 0.
"""

_EPILOG = """\
examples:
  jobwire worker --target jobs.internal:50051 --handlers myapp.jobs --slots 8
  JOBWIRE_TOKEN=... jobwire worker --handlers myapp.jobs --queue media --tls

The token needs the jobs:work scope. Exit status: 0 after a drain, 1 when the server refused the
worker (a kind whose phases changed: KIND_MISMATCH, a bad token), 2 on a usage error.
"""


def add_worker_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("worker", help="run handler modules as a remote worker", description=_DESCRIPTION,
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", metavar="HOST:PORT", help=f"server address (default $JOBWIRE_TARGET, then "
                                                         f"{DEFAULT_TARGET})")
    p.add_argument("--handlers", action="append", required=True, metavar="MODULE",
                   help="module defining Kinds at its top level (repeatable)")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, metavar="N",
                   help=f"jobs run at once, 1-1024 (default {DEFAULT_SLOTS}, as the server's --concurrency)")
    p.add_argument("--queue", action="append", default=[], help="take jobs only from this queue (repeatable; "
                                                                "default every queue)")
    p.add_argument("--worker-id", default=None, metavar="ID", help="name in the server's logs (default host:pid)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long running jobs may finish after SIGTERM (default 30)")
    p.add_argument("--token", help="bearer token with the jobs:work scope (default $JOBWIRE_TOKEN)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate to verify the server with")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    """``jobwire worker``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # `--handlers myapp.jobs` finds ./myapp, as `jobwire serve` does
    tls = (TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
           if args.tls or args.tls_ca or args.tls_cert or args.tls_key else None)
    try:
        worker = Worker.from_modules(args.target or os.environ.get("JOBWIRE_TARGET") or DEFAULT_TARGET,
                                     args.handlers, slots=args.slots, queues=args.queue,
                                     token=args.token or os.environ.get("JOBWIRE_TOKEN") or None, tls=tls,
                                     worker_id=args.worker_id, drain_timeout=args.drain_timeout)
    except (ImportError, ValueError) as exc:
        print(f"jobwire: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_run_until_signalled(worker))
    except WorkerRefused as exc:
        print(f"jobwire: error: the server refused this worker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _run_until_signalled(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.shutdown)
    await worker.run()
