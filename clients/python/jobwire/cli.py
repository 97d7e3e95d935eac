"""Client-side commands of the ``jobwire`` command line.

:func:`main` is the ``jobwire`` command. It adds ``serve``, ``hash-token``, ``migrate`` and ``copy``
from the server package when the ``jobwire[server]`` extra is installed (otherwise stand-ins that say
so), then the client commands; each command sets ``args.func``, which returns the exit code.

Output is for people by default and one JSON object per line with ``--json``. Errors print one line
``error: <message> (<CODE>)`` on stderr.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import grpc

from jobwire import __version__
from jobwire.client import DEFAULT_TARGET, TLSConfig
from jobwire.errors import JobwireError
from jobwire.health import JOB_SERVICE, health_status
from jobwire.models import BulkResult, EventType, Job, JobEvent, JobState, Phase, Progress, WebhookDelivery
from jobwire.sync import Client

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_ERROR = 3
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_WATCH_EXIT = {JobState.SUCCEEDED: EXIT_OK, JobState.FAILED: EXIT_FAILED, JobState.CANCELLED: EXIT_CANCELLED}

_CONNECTION_HELP = """\
connection:
  --target defaults to $JOBWIRE_TARGET, then 127.0.0.1:50051; --token to $JOBWIRE_TOKEN.
  Any --tls-* flag (or --tls) switches to TLS; --tls-cert with --tls-key sends a client certificate.
"""

_WATCH_EPILOG = """\
exit status: 0 when the job SUCCEEDED, 1 when it FAILED, 2 when it was CANCELLED, 3 on an error.
With --json each event is printed as one JSON object per line.
"""


class UsageError(Exception):
    """Bad command-line input detected after parsing (bad JSON, unreadable file, ...)."""


# --- parser --------------------------------------------------------------------------------------


def add_client_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add enqueue, get, list, watch, cancel, retry, events, stats, webhooks, prune, schedules, health and worker
    to a parser."""
    common = _common_flags()

    def command(name: str, summary: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        return subparsers.add_parser(
            name,
            help=summary,
            description=description,
            epilog=epilog + "\n" + _CONNECTION_HELP,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command(
        "enqueue",
        "create a job",
        "Create a job of KIND and print it once the server has stored it.",
        "examples:\n"
        '  jobwire enqueue sleep --payload \'{"seconds": 2, "phases": 3}\' --watch\n'
        "  jobwire enqueue report --payload @input.json --queue reports --label team=data\n\n"
        "With --watch the exit status is that of `jobwire watch`.\n"
        'With --json the first line is {"job": ..., "deduplicated": ...}, then one line per event.\n',
    )
    p.add_argument("kind", metavar="KIND", help="kind of job (selects the handler)")
    p.add_argument(
        "--payload", metavar="JSON|@FILE", help="job input: a JSON text, @FILE for a file's bytes, @- for stdin"
    )
    p.add_argument("--queue", default="", help="queue to put the job in (default: the server's default)")
    p.add_argument("--priority", type=int, default=0, metavar="N", help="1-10, 10 runs first (default 5)")
    p.add_argument("--delay", type=_seconds, metavar="SECONDS", help="run no earlier than SECONDS from now")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="time limit of each phase attempt")
    p.add_argument("--label", action="append", type=_label, default=[], metavar="K=V", help="label (repeatable)")
    p.add_argument("--max-attempts", type=int, default=0, metavar="N", help="attempts including the first")
    p.add_argument("--dedupe-key", default="", metavar="KEY", help="fold into an active job with this key")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key (default: generated)")
    p.add_argument("--webhook", default="", metavar="URL", help="POST the job's events to URL (signed)")
    p.add_argument("--webhook-event", action="append", type=_event_type, default=[], metavar="TYPE",
                   help="event to send to --webhook (repeatable; default SUCCEEDED, FAILED, CANCELLED)")
    p.add_argument("--watch", action="store_true", help="then watch the job until it finishes")
    p.set_defaults(func=cmd_enqueue)

    p = command("get", "show one job", "Show a job as it is now, with its phases and errors.")
    p.add_argument("id", metavar="ID", help="job id")
    p.set_defaults(func=cmd_get)

    p = command(
        "list",
        "list jobs",
        "List jobs matching every filter, newest first.",
        "examples:\n  jobwire list --state FAILED --queue reports --limit 20\n"
        "  jobwire list --label-in env=prod,staging --label-key customer --finished-after 1h\n\n" + _FILTER_HELP,
    )
    _add_filter_flags(p)
    p.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N jobs (default 50; 0: all)")
    p.set_defaults(func=cmd_list)

    p = command(
        "watch",
        "follow a job until it finishes",
        "Follow a job live: a progress bar per phase, redrawn in place on a terminal, one line per event "
        "otherwise; then the final state.",
        _WATCH_EPILOG,
    )
    p.add_argument("id", metavar="ID", help="job id")
    p.set_defaults(func=cmd_watch)

    p = command(
        "cancel",
        "cancel a job, or every job matching filters",
        "Cancel a job, or every job matching the filters. A running job is asked to stop and finishes "
        "CANCELLED. Acting on more than one job needs the admin scope.",
        "examples:\n  jobwire cancel 01a205ce-a03c-711e-bd98-cca0901f41ba --reason 'no longer needed'\n"
        "  jobwire cancel --state QUEUED --queue media --dry-run\n"
        "  jobwire cancel --state QUEUED --queue media --reason 'media freeze'\n\n" + _FILTER_HELP,
    )
    p.add_argument("id", metavar="ID", nargs="?", help="job id (or give filters instead)")
    p.add_argument("--reason", default="", help="why, stored on the job")
    _add_bulk_flags(p, "cancel")
    p.set_defaults(func=cmd_cancel)

    p = command(
        "retry",
        "run a finished job again, or every job matching filters",
        "Put a FAILED or CANCELLED job (or, with --from-start, a SUCCEEDED one) back in the queue, or every "
        "such job matching the filters. Acting on more than one job needs the admin scope.",
        "example:\n  jobwire retry --state FAILED --queue reports --finished-after 2h\n\n" + _FILTER_HELP,
    )
    p.add_argument("id", metavar="ID", nargs="?", help="job id (or give filters instead)")
    p.add_argument("--from-start", action="store_true", help="rerun every phase, also those that succeeded")
    _add_bulk_flags(p, "retry")
    p.set_defaults(func=cmd_retry)

    p = command(
        "events",
        "tail live events",
        "Print events of all matching jobs as they happen, until Ctrl-C. Filters of one kind combine with OR.",
    )
    p.add_argument("--queue", action="append", default=[], help="only jobs in this queue (repeatable)")
    p.add_argument("--kind", action="append", default=[], help="only jobs of this kind (repeatable)")
    p.add_argument("--type", action="append", type=_event_type, default=[], metavar="TYPE", help=_types_help())
    p.set_defaults(func=cmd_events)

    p = command("stats", "show queue statistics", "Job counts per state and the oldest QUEUED job's age.")
    p.add_argument("--queue", default="", help="only this queue (default: every queue holding jobs)")
    p.set_defaults(func=cmd_stats)
    _add_webhook_and_retention_commands(command)
    _add_schedule_commands(subparsers, common)
    _add_health_command(command)
    _add_worker_command(subparsers)


def _add_worker_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from jobwire.worker.cli import add_worker_command  # noqa: PLC0415 - keeps `jobwire --help` fast

    add_worker_command(subparsers)


def _add_schedule_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                           common: argparse.ArgumentParser) -> None:
    from jobwire.cli_schedules import add_schedule_commands  # noqa: PLC0415 - it builds on this module

    add_schedule_commands(subparsers, common)


def _add_health_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "health",
        "ask whether the server is serving",
        "Ask the server's health service (grpc.health.v1) whether SERVICE is SERVING. With --wait, wait up "
        "to SECONDS for it to start serving, e.g. right after starting the server.",
        "example:\n  jobwire serve & jobwire health --wait 30 && jobwire enqueue noop --watch\n\n"
        "exit status: 0 when SERVING, 1 otherwise (or when --wait runs out), 3 when the server cannot be "
        "reached.\n",
    )
    p.add_argument("--service", default=JOB_SERVICE, help=f"service to ask about (default {JOB_SERVICE}; "
                   "'' is the server as a whole)")
    p.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for SERVING (default: ask once)")
    p.set_defaults(func=cmd_health)


def _add_webhook_and_retention_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "webhooks",
        "show a job's webhook deliveries",
        "Show each webhook delivery of a job (one per event sent) with every attempt: when, the HTTP "
        "status, latency and error. The delivery log is kept for 30 days by default.",
    )
    p.add_argument("id", metavar="ID", help="job id")
    p.set_defaults(func=cmd_webhooks)

    p = command(
        "prune",
        "run retention now",
        "Make finished jobs past their keep time STALE, delete STALE jobs past theirs, and prune the "
        "webhook delivery log, as the server's own schedule does. Needs the admin scope.",
        "example:\n  jobwire prune --dry-run\n",
    )
    p.add_argument("--dry-run", action="store_true", help="only count what would be done")
    p.set_defaults(func=cmd_prune)


_FILTER_HELP = """\
filters (all given must match):
  --label K=V is an exact label, --label-key K a label that must be present (any value),
  --label-in K=V1,V2 a label whose value is one of those. Times are ISO 8601 (2030-01-31,
  2030-01-31T12:00:00Z; UTC unless an offset is given) or an age: 90s, 30m, 2h, 7d ago.
"""


def _add_filter_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument("--queue", default="", help="only jobs in this queue")
    p.add_argument("--kind", default="", help="only jobs of this kind")
    p.add_argument("--state", action="append", type=_job_state, default=[], metavar="STATE", help=_states_help())
    p.add_argument("--label", action="append", type=_label, default=[], metavar="K=V", help="label that must match")
    p.add_argument("--label-key", action="append", default=[], metavar="K", help="label key that must be present "
                   "(repeatable)")
    p.add_argument("--label-in", action="append", type=_label_values, default=[], metavar="K=V1,V2",
                   help="label whose value is one of these (repeatable)")
    for name, what in (("created", "created"), ("finished", "finished")):
        p.add_argument(f"--{name}-after", type=_when_given, metavar="TIME", help=f"only jobs {what} at or after TIME")
        p.add_argument(f"--{name}-before", type=_when_given, metavar="TIME", help=f"only jobs {what} before TIME")


def _add_bulk_flags(p: argparse.ArgumentParser, verb: str) -> None:
    group = p.add_argument_group(f"{verb} every job matching filters (instead of ID)")
    _add_filter_flags(group)
    group.add_argument("--all", action="store_true", dest="all_jobs", help=f"{verb} every job (no filter needed)")
    group.add_argument("--dry-run", action="store_true", help="only count the matching jobs")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter flags as keyword arguments of Client.list_jobs / cancel_jobs / retry_jobs."""
    return {
        "queue": args.queue, "kind": args.kind, "states": args.state, "labels": dict(args.label),
        "label_keys": args.label_key, "label_in": dict(args.label_in), "created_after": args.created_after,
        "created_before": args.created_before, "finished_after": args.finished_after,
        "finished_before": args.finished_before,
    }


def _has_filters(args: argparse.Namespace) -> bool:
    return any(bool(value) for value in _filters(args).values())


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--target", metavar="HOST:PORT", help=f"server address (default {DEFAULT_TARGET})")
    group.add_argument("--token", help="bearer token")
    group.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    group.add_argument("--tls-ca", metavar="PEM", help="CA certificate to verify the server with")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)")
    group.add_argument("--json", action="store_true", help="print one JSON object per line")
    return common


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _label_values(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,VALUE...], got {text!r}")
    return key, values.split(",")


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when_given(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it has an offset), or an age such as 30m meaning that long ago."""
    unit = _AGE_UNITS.get(text[-1:].lower())
    if unit is not None:
        try:
            return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * unit)
        except ValueError:
            pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time or an age like 30m, got {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _job_state(text: str) -> JobState:
    try:
        return JobState(text.upper().removeprefix("JOB_STATE_"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown state {text!r}") from None


def _event_type(text: str) -> EventType:
    try:
        return EventType(text.upper().removeprefix("EVENT_TYPE_"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown event type {text!r}") from None


def _states_help() -> str:
    names = ", ".join(s for s in JobState if s is not JobState.UNSPECIFIED)
    return f"only jobs in this state (repeatable): {names}"


def _types_help() -> str:
    names = ", ".join(t for t in EventType if t not in (EventType.UNSPECIFIED, EventType.SNAPSHOT))
    return f"only events of this type (repeatable): {names}"


# --- commands ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, body: Callable[[Client], int], error_exit: int = 1) -> int:
    """Open a client, run ``body``, and turn failures into one ``error:`` line and an exit code."""
    try:
        with _client(args) as client:
            return body(client)
    except JobwireError as exc:
        _error(f"{exc.message} ({exc.code_name})")
        return error_exit
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        _error(str(exc))
        return error_exit
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _client(args: argparse.Namespace) -> Client:
    target = args.target or os.environ.get("JOBWIRE_TARGET") or DEFAULT_TARGET
    token = args.token or os.environ.get("JOBWIRE_TOKEN") or None
    return Client(target, token=token, tls=_tls(args))


def _tls(args: argparse.Namespace) -> TLSConfig | None:
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    return None


def cmd_enqueue(args: argparse.Namespace) -> int:
    """``jobwire enqueue``."""
    try:
        payload = _read_payload(args.payload)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE

    def body(client: Client) -> int:
        handle = client.enqueue(
            args.kind,
            payload,
            queue=args.queue,
            priority=args.priority,
            delay=args.delay,
            timeout=args.timeout,
            labels=dict(args.label),
            max_attempts=args.max_attempts,
            dedupe_key=args.dedupe_key,
            request_id=args.request_id,
            webhook_url=args.webhook,
            webhook_events=tuple(args.webhook_event),
        )
        if args.json:
            _print_json({"job": handle.job, "deduplicated": handle.deduplicated})
        else:
            job = handle.job
            state = job.state if job is not None else "?"
            note = " (deduplicated: an active job with this dedupe key exists)" if handle.deduplicated else ""
            print(f"enqueued {handle.id} [{state}]{note}", flush=True)
        if not args.watch:
            return EXIT_OK
        return _watch(client, handle.id, args.json)

    return _run(args, body, EXIT_ERROR if args.watch else 1)


def _read_payload(spec: str | None) -> bytes | None:
    if spec is None:
        return None
    if spec.startswith("@"):
        name = spec[1:]
        try:
            return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read payload file {name!r}: {exc.strerror}") from exc
    try:
        json.loads(spec)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON ({exc}); use @FILE to send a file's bytes") from exc
    return spec.encode()


def cmd_get(args: argparse.Namespace) -> int:
    """``jobwire get``."""

    def body(client: Client) -> int:
        job = client.get_job(args.id)
        if args.json:
            _print_json(job)
        else:
            print(describe_job(job))
        return EXIT_OK

    return _run(args, body)


def cmd_list(args: argparse.Namespace) -> int:
    """``jobwire list``."""

    def body(client: Client) -> int:
        limit = args.limit if args.limit > 0 else None
        page_size = min(limit, 1000) if limit else 0
        jobs = client.list_jobs(**_filters(args), page_size=page_size)
        rows: list[Job] = []
        count = 0
        try:
            for job in jobs:
                if limit is not None and count >= limit:
                    break
                count += 1
                if args.json:
                    _print_json(job)
                else:
                    rows.append(job)
        finally:
            jobs.close()
        if not args.json:
            print(format_job_table(rows))
        return EXIT_OK

    return _run(args, body)


def cmd_watch(args: argparse.Namespace) -> int:
    """``jobwire watch``."""
    return _run(args, lambda client: _watch(client, args.id, args.json), EXIT_ERROR)


def _watch(client: Client, job_id: str, as_json: bool) -> int:
    view: WatchView | None = None if as_json else WatchView(sys.stdout)
    last: Job | None = None
    try:
        for event in client.handle(job_id).watch():
            if event.job is not None:
                last = event.job
            if view is not None:
                view.update(event)
            else:
                _print_json(event)
    except KeyboardInterrupt:
        # Stopping the watch does not stop the job: say so, and how to pick it up again.
        state = f" [{last.state}]" if last is not None else ""
        print(f"\nstopped watching job {job_id}{state}; the job keeps running on the server. "
              f"Watch it again with: jobwire watch {job_id}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if last is None or not last.is_terminal:
        last = client.get_job(job_id)
    outcome = last.outcome()
    if view is not None:
        view.finish(last)
    return _WATCH_EXIT.get(outcome, EXIT_ERROR) if outcome is not None else EXIT_ERROR


def cmd_cancel(args: argparse.Namespace) -> int:
    """``jobwire cancel ID`` or ``jobwire cancel FILTERS [--all] [--dry-run]``."""
    problem = _target_problem(args)
    if problem:
        _error(problem)
        return EXIT_USAGE
    if args.id is None:
        return _run(args, lambda client: _print_bulk(
            args, "cancel", client.cancel_jobs(**_filters(args), all_jobs=args.all_jobs, dry_run=args.dry_run,
                                               reason=args.reason)))

    def body(client: Client) -> int:
        job = client.handle(args.id).cancel(args.reason)
        if args.json:
            _print_json(job)
        elif job.state is JobState.CANCELLED:
            print(f"cancelled {job.id}")
        else:
            print(f"cancel requested for {job.id} [{job.state}]: its handler was asked to stop")
        return EXIT_OK

    return _run(args, body)


def cmd_retry(args: argparse.Namespace) -> int:
    """``jobwire retry ID`` or ``jobwire retry FILTERS [--all] [--dry-run]``."""
    problem = _target_problem(args)
    if problem:
        _error(problem)
        return EXIT_USAGE
    if args.id is None:
        return _run(args, lambda client: _print_bulk(
            args, "retry", client.retry_jobs(**_filters(args), all_jobs=args.all_jobs, dry_run=args.dry_run,
                                             from_start=args.from_start)))

    def body(client: Client) -> int:
        job = client.handle(args.id).retry(from_start=args.from_start)
        if args.json:
            _print_json(job)
        else:
            print(f"retrying {job.id} [{job.state}] with a fresh budget of {job.max_attempts} attempts "
                  f"({job.attempt} made before)")
        return EXIT_OK

    return _run(args, body)


def _target_problem(args: argparse.Namespace) -> str:
    """Why the command line names neither one job nor a set of jobs (or both); empty when it is fine."""
    if args.id is not None and (_has_filters(args) or args.all_jobs or args.dry_run):
        return f"give a job ID or filters, not both (`jobwire {args.command} --help`)"
    if args.id is None and not _has_filters(args) and not args.all_jobs:
        return (f"give a job ID, or filters such as --state and --queue (--all for every job; "
                f"`jobwire {args.command} --help`)")
    return ""


_SKIP_WORDS = {
    "ALREADY_FINISHED": "already finished", "ALREADY_CANCELLED": "already cancelled",
    "CANCEL_ALREADY_REQUESTED": "cancel already requested", "STILL_ACTIVE": "still active",
    "NEEDS_FROM_START": "succeeded (needs --from-start)", "NOTHING_TO_RESUME": "nothing to resume (use --from-start)",
    "DEDUPE_KEY_TAKEN": "dedupe key held by an active job", "NO_LONGER_MATCHES": "changed meanwhile",
    "NOT_FOUND": "deleted meanwhile",
}


def format_bulk(verb: str, result: BulkResult) -> str:
    """The one line `jobwire cancel|retry FILTERS` prints."""
    if result.dry_run:
        return f"{result.matched} jobs match; nothing changed (dry run)"
    done = {"cancel": "cancelled", "retry": "retried"}[verb]
    line = f"{done} {result.changed} of {result.matched} matching jobs"
    if result.cancel_requested:
        line += f" ({result.cancel_requested} running, asked to stop)"
    skipped = sum(result.skipped.values())
    if skipped:
        line += f"; skipped {skipped}: " + ", ".join(f"{count} {_SKIP_WORDS.get(why, why)}"
                                                     for why, count in result.skipped.items())
    return line


def _print_bulk(args: argparse.Namespace, verb: str, result: BulkResult) -> int:
    if args.json:
        _print_json(result)
    else:
        print(format_bulk(verb, result))
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    """``jobwire events``: tail until Ctrl-C."""

    def body(client: Client) -> int:
        events = client.watch_events(queues=args.queue, kinds=args.kind, types=args.type)
        try:
            for event in events:
                if args.json:
                    _print_json(event)
                else:
                    print(format_event(event), flush=True)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            events.close()
        return EXIT_OK

    return _run(args, body)


def cmd_stats(args: argparse.Namespace) -> int:
    """``jobwire stats``."""

    def body(client: Client) -> int:
        stats = client.queue_stats(args.queue)
        if args.json:
            for entry in stats:
                _print_json(entry)
            return EXIT_OK
        header = (
            "QUEUE",
            "SCHEDULED",
            "QUEUED",
            "RUNNING",
            "RETRYING",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "STALE",
            "OLDEST QUEUED",
        )
        rows = [
            (
                s.queue,
                s.scheduled,
                s.queued,
                s.running,
                s.retrying,
                s.succeeded,
                s.failed,
                s.cancelled,
                s.stale,
                _age(s.oldest_queued_age),
            )
            for s in stats
        ]
        print(_table(header, rows) if rows else "no queue holds jobs")
        return EXIT_OK

    return _run(args, body)


def cmd_webhooks(args: argparse.Namespace) -> int:
    """``jobwire webhooks ID``."""

    def body(client: Client) -> int:
        deliveries = client.webhook_deliveries(args.id)
        if args.json:
            for delivery in deliveries:
                _print_json(delivery)
            return EXIT_OK
        if not deliveries:
            print(f"job {args.id} has no webhook deliveries")
            return EXIT_OK
        for delivery in deliveries:
            print(format_delivery(delivery))
        return EXIT_OK

    return _run(args, body)


def cmd_prune(args: argparse.Namespace) -> int:
    """``jobwire prune [--dry-run]``."""

    def body(client: Client) -> int:
        result = client.prune(args.dry_run)
        if args.json:
            _print_json(result)
            return EXIT_OK
        verb = "would make" if result.dry_run else "made"
        print(f"{verb} {result.marked_stale} jobs STALE, "
              f"{'would delete' if result.dry_run else 'deleted'} {result.deleted} STALE jobs, "
              f"{'would prune' if result.dry_run else 'pruned'} {result.delivery_log_pruned} delivery log entries")
        return EXIT_OK

    return _run(args, body)


def cmd_health(args: argparse.Namespace) -> int:
    """``jobwire health [--wait SECONDS]``."""
    target = args.target or os.environ.get("JOBWIRE_TARGET") or DEFAULT_TARGET
    try:
        status = health_status(target, args.service, wait=args.wait, tls=_tls(args))
    except grpc.RpcError as exc:
        code = exc.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            _error(f"{target} did not report {args.service or 'the server'} SERVING within {args.wait:g}s")
            return EXIT_FAILED
        _error(f"{exc.details() or 'health check failed'} ({code.name if code is not None else 'UNKNOWN'})")
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    if args.json:
        _print_json({"service": args.service, "status": status})
    else:
        print(f"{args.service or 'server'}: {status}")
    return EXIT_OK if status == "SERVING" else EXIT_FAILED


def format_delivery(delivery: WebhookDelivery) -> str:
    head = (f"{delivery.id}  {delivery.event_type.value} #{delivery.event_sequence}  {delivery.state}  "
            f"{delivery.url}  attempts: {delivery.attempts}")
    if delivery.state == "PENDING" and delivery.next_attempt_time is not None:
        head += f"  next: {_when(delivery.next_attempt_time)}"
    rows = [(a.number, _when(a.time), a.status_code or "-", f"{a.latency.total_seconds() * 1000:.0f} ms",
             a.error or _short(a.response.encode(), 60)) for a in delivery.attempt_log]
    if not rows:
        return head
    table = _table(("#", "TIME", "STATUS", "LATENCY", "ERROR / ANSWER"), rows)
    return head + "\n" + "\n".join("  " + line for line in table.splitlines())


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


# --- rendering -----------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """A model (or anything holding models) as JSON-ready data.

    Bytes become UTF-8 text when they decode, else ``{"base64": "..."}``; times are ISO 8601 UTC;
    durations are seconds.
    """
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value), ensure_ascii=False, separators=(",", ":")), flush=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _age(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _short(data: bytes, limit: int = 200) -> str:
    text = data.decode(errors="replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(header), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def format_job_table(jobs: Sequence[Job]) -> str:
    """The ``jobwire list`` table."""
    if not jobs:
        return "no jobs"
    header = ("ID", "STATE", "QUEUE", "KIND", "ATTEMPT", "PROGRESS", "CREATED")
    rows = [
        (
            j.id,
            j.state,
            j.queue,
            j.kind,
            f"{j.counted_attempts}/{j.max_attempts}",
            f"{j.progress.percent:.0f}%",
            _when(j.create_time),
        )
        for j in jobs
    ]
    return _table(header, rows)


def describe_job(job: Job) -> str:
    """The ``jobwire get`` text: the job's fields, then its phases and errors."""
    lines = [
        f"id:         {job.id}",
        f"kind:       {job.kind}",
        f"queue:      {job.queue}",
        f"state:      {job.state}" + (" (cancel requested)" if job.cancel_requested else ""),
        f"attempt:    {_attempts(job)}",
        f"priority:   {job.priority}",
        f"progress:   {job.progress.percent:.0f}% {job.progress.message}".rstrip(),
        f"created:    {_when(job.create_time)}",
        f"run at:     {_when(job.run_at)}",
        f"started:    {_when(job.start_time)}",
        f"finished:   {_when(job.finish_time)}",
    ]
    if job.labels:
        lines.append("labels:     " + ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items())))
    if job.dedupe_key:
        lines.append(f"dedupe key: {job.dedupe_key}")
    if job.cancel_reason:
        lines.append(f"cancelled:  {job.cancel_reason}")
    if job.payload:
        lines.append(f"payload:    {_short(job.payload)}")
    if job.result:
        lines.append(f"result:     {_short(job.result)}")
    if job.error is not None:
        where = f" in phase {job.error.phase}" if job.error.phase else ""
        lines.append(f"error:      {job.error.type}: {job.error.message}{where} (attempt {job.error.attempt})")
    if job.phases:
        lines.append("phases:")
        width = max(len(p.name) for p in job.phases)
        lines.extend("  " + _phase_line(p, width, ascii_only=True) for p in job.phases)
    return "\n".join(lines)


def _attempts(job: Job) -> str:
    """``1 of 3``: the attempts counted against the budget; ``(4 in all)`` when a retry or a
    shutdown made more."""
    text = f"{job.counted_attempts} of {job.max_attempts}"
    return text + (f" ({job.attempt} in all)" if job.attempt != job.counted_attempts else "")


def _bar(percent: float, width: int, ascii_only: bool) -> str:
    filled = round(max(0.0, min(100.0, percent)) / 100 * width)
    full, empty = ("#", ".") if ascii_only else ("█", "░")
    return full * filled + empty * (width - filled)


def _phase_line(phase: Phase, name_width: int, ascii_only: bool, bar_width: int = 24) -> str:
    return _progress_line(phase.name, phase.state, phase.progress, name_width, ascii_only, bar_width)


def _progress_line(
    name: str, state: str, progress: Progress, name_width: int, ascii_only: bool, bar_width: int = 24
) -> str:
    bar = _bar(progress.percent, bar_width, ascii_only)
    return f"{name.ljust(name_width)}  [{bar}] {progress.percent:5.1f}%  {state:<9}  {progress.message}".rstrip()


def format_event(event: JobEvent) -> str:
    """One line for an event: time, type, job, phase, progress and detail."""
    parts = [_when(event.time), f"{event.type:<17}", event.job_id]
    if event.phase:
        parts.append(f"phase={event.phase}")
    job = event.job
    if event.type is EventType.PROGRESS and job is not None:
        phase = next((p for p in job.phases if p.name == event.phase), None)
        percent = phase.progress.percent if phase is not None else job.progress.percent
        parts.append(f"{percent:.0f}%")
    elif job is not None and event.type in (EventType.SNAPSHOT, EventType.ENQUEUED):
        parts.append(f"state={job.state}")
    if event.detail:
        parts.append(event.detail)
    return " ".join(parts)


class WatchView:
    """Renders a watched job: bars redrawn in place on a terminal, one line per event otherwise."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        encoding = (getattr(out, "encoding", None) or "").lower()
        self._ascii = not encoding.startswith("utf")
        self._drawn = 0

    def update(self, event: JobEvent) -> None:
        if not self._tty:
            self._out.write(format_event(event) + "\n")
        elif event.job is not None:
            self._redraw(self.render(event.job))
        self._out.flush()

    def render(self, job: Job) -> list[str]:
        """The lines of the live view of ``job``: a header, then one bar per phase (or one overall)."""
        header = f"job {job.id}  {job.kind}  {job.state}  attempt {_attempts(job)}"
        if job.cancel_requested and not job.is_terminal:
            header += "  (cancel requested)"
        if not job.phases:
            return [header, "  " + _progress_line("progress", job.state, job.progress, 8, self._ascii)]
        width = max(len(p.name) for p in job.phases)
        return [header, *("  " + _phase_line(p, width, self._ascii) for p in job.phases)]

    def finish(self, job: Job) -> None:
        """Draw the final view (on a terminal) and print the final state line."""
        if self._tty:
            self._redraw(self.render(job))
            self._drawn = 0
        line = f"job {job.id} {job.outcome() or job.state}"
        if job.error is not None and job.outcome() is JobState.FAILED:
            line += f": {job.error.type}: {job.error.message}"
        elif job.cancel_reason:
            line += f": {job.cancel_reason}"
        self._out.write(line + "\n")
        self._out.flush()

    def _redraw(self, lines: list[str]) -> None:
        columns = shutil.get_terminal_size().columns
        if self._drawn:
            # Back to the first line drawn last time, then clear to the end of the screen.
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")
        for line in lines:
            self._out.write(line[: columns - 1] + "\n")
        self._drawn = len(lines)


# --- the jobwire command ---------------------------------------------------------------------------

_SERVER_HINT = ("`jobwire {command}` is part of the server, which is not installed here: "
                "pip install 'jobwire[server]'{missing}")


def _add_server_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The server package's commands (``serve``, ``hash-token``, ``migrate``, ``copy``), or stand-ins that say
    how to install it."""
    try:
        from jobwire_server.cli import add_server_commands  # noqa: PLC0415 - the server extra is optional
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in ("jobwire", "jobwire_server") and exc.name != "jobwire_server":
            raise  # a bug in our own package, not a missing extra
        missing = f" (missing module {exc.name})" if exc.name and exc.name != "jobwire_server" else ""
    else:
        add_server_commands(commands)
        return
    for name, summary in (("serve", "run the service (needs jobwire[server])"),
                          ("hash-token", "hash a bearer token for the tokens file (needs jobwire[server])"),
                          ("migrate", "apply database migrations without serving (needs jobwire[server])"),
                          ("copy", "copy a SQLite database into PostgreSQL (needs jobwire[server])")):
        p = commands.add_parser(name, help=summary, add_help=False)
        p.set_defaults(func=_needs_server, hint=_SERVER_HINT.format(command=name, missing=missing))


def _needs_server(args: argparse.Namespace) -> int:
    print(f"jobwire: error: {args.hint}", file=sys.stderr)
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    """The ``jobwire`` command: ``serve`` (with the server extra) and the client commands."""
    parser = argparse.ArgumentParser(
        prog="jobwire",
        description="jobwire: a job-control service. Enqueue, watch, cancel and retry jobs over gRPC.",
        epilog="Run `jobwire COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"jobwire {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_server_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``jobwire`` command; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _needs_server:  # a stand-in takes any argument, to print its hint
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # `jobwire events | head`: the reader left, which is fine
        sys.stderr.close()
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
