"""``jobwire schedules ACTION``: create, list, get, update, delete, pause, resume and trigger schedules.

`update` reads the schedule and replaces only the fields given on the command line (the server
replaces a spec as a whole). Durations (``--every``, ``--jitter``, ``--timeout``) are seconds or a
number with a unit: ``500ms``, ``30s``, ``15m``, ``2h``, ``1d``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from jobwire import cli
from jobwire.models import CatchupPolicy, OverlapPolicy, Schedule, ScheduleSpec
from jobwire.sync import Client

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_SPEC_EPILOG = """\
timing: exactly one of --cron (5 fields or a macro such as @daily, read in --time-zone, UTC by
default) and --every (a fixed interval; firings fall on its multiples since 1970-01-01 UTC).
durations: seconds, or a number with a unit: 500ms, 30s, 15m, 2h, 1d.
"""


def add_schedule_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                          common: argparse.ArgumentParser) -> None:
    """The ``schedules`` command and its actions (each takes the connection flags)."""
    p = subparsers.add_parser(
        "schedules", help="manage schedules (jobs enqueued on a cron or an interval)",
        description="Create, list, show, change, delete, pause, resume and trigger schedules. Writes need the "
                    "schedules:write scope; list and get need jobs:read.",
        epilog="examples:\n"
               "  jobwire schedules create nightly report --cron '0 3 * * *' --time-zone Europe/Paris\n"
               "  jobwire schedules create sweep noop --every 15m --overlap skip\n"
               "  jobwire schedules trigger nightly --watch\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, summary: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        return actions.add_parser(name, help=summary, description=description, parents=[common],
                                  epilog=epilog + "\n" + cli._CONNECTION_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)

    a = action("create", "create a schedule", "Create schedule ID, which enqueues a job of KIND at each firing.",
               _SPEC_EPILOG)
    a.add_argument("id", metavar="ID", help="schedule id: letters, digits, '.', '-', '_'")
    a.add_argument("kind", metavar="KIND", help="kind of the jobs it enqueues")
    _spec_flags(a)
    a.add_argument("--paused", action="store_true", help="create it paused")
    a.set_defaults(func=cmd_create)

    a = action("update", "change a schedule",
               "Change the fields of schedule ID given here; the others stay as they are. --label and "
               "--webhook-event replace the whole list when given.", _SPEC_EPILOG)
    a.add_argument("id", metavar="ID", help="schedule id")
    a.add_argument("--kind", help="kind of the jobs it enqueues")
    _spec_flags(a)
    a.set_defaults(func=cmd_update)

    a = action("list", "list schedules", "List schedules by id, with their timing and next firing.")
    a.add_argument("--limit", type=int, default=0, metavar="N", help="show at most N schedules (default: all)")
    a.set_defaults(func=cmd_list)

    for name, summary, func in (("get", "show a schedule and its next firing times", cmd_get),
                                ("delete", "delete a schedule (its jobs stay)", cmd_delete),
                                ("pause", "stop a schedule's firings", cmd_pause),
                                ("resume", "fire again, from the first time after now", cmd_resume)):
        a = action(name, summary, summary[0].upper() + summary[1:] + ".")
        a.add_argument("id", metavar="ID", help="schedule id")
        a.set_defaults(func=func)

    a = action("trigger", "fire a schedule once now",
               "Enqueue one job of schedule ID now (paused or not), under its overlap policy.",
               "With --watch the exit status is that of `jobwire watch`.\n")
    a.add_argument("id", metavar="ID", help="schedule id")
    a.add_argument("--request-id", default="", metavar="ID", help="idempotency key (default: generated)")
    a.add_argument("--watch", action="store_true", help="then watch the job until it finishes")
    a.set_defaults(func=cmd_trigger)


def _spec_flags(p: argparse.ArgumentParser) -> None:
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--cron", metavar="EXPR", help="cron expression, e.g. '*/15 * * * *' or @daily")
    timing.add_argument("--every", type=_duration, metavar="DURATION", help="fixed interval, e.g. 15m")
    p.add_argument("--time-zone", metavar="ZONE", help="IANA zone the cron expression is read in (default UTC)")
    p.add_argument("--jitter", type=_duration, metavar="DURATION", help="delay each job by up to this much")
    p.add_argument("--overlap", type=_choice(OverlapPolicy), metavar="POLICY",
                   help="while the previous job is active: allow (default), skip, cancel-previous")
    p.add_argument("--catchup", type=_choice(CatchupPolicy), metavar="POLICY",
                   help="after downtime: skip the missed firings (default) or run-once")
    p.add_argument("--description", help="free text for people")
    p.add_argument("--payload", metavar="JSON|@FILE", help="job input: JSON text, @FILE, or @- for stdin")
    p.add_argument("--queue", help="queue of its jobs (default: the kind's)")
    p.add_argument("--priority", type=int, metavar="N", help="1-10, 10 runs first (default 5)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="attempts per job including the first")
    p.add_argument("--timeout", type=_duration, metavar="DURATION", help="time limit of each phase attempt")
    p.add_argument("--dedupe-key", metavar="KEY", help="fold a firing into an active job with this key")
    p.add_argument("--concurrency-key", metavar="KEY", help="concurrency key of its jobs (the queue's key limit)")
    p.add_argument("--label", action="append", type=cli._label, metavar="K=V", help="label (repeatable)")
    p.add_argument("--webhook", metavar="URL", help="POST each job's events to URL")
    p.add_argument("--webhook-event", action="append", type=cli._event_type, metavar="TYPE",
                   help="event to send to --webhook (repeatable)")


def _duration(text: str) -> float:
    value = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].strip():
            value, scale = value[: -len(unit)], _UNITS[unit]
            break
    else:
        scale = 1.0
    try:
        seconds = float(value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90, 30s, 15m, 2h, 1d)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return seconds


def _choice(enum: type[OverlapPolicy] | type[CatchupPolicy]) -> Callable[[str], str]:
    names = [m.value for m in enum if m.value != "UNSPECIFIED"]

    def parse(text: str) -> str:
        value = text.upper().replace("-", "_")
        if value not in names:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(n.lower().replace('_', '-') for n in names)}")
        return value

    return parse


# --- commands ------------------------------------------------------------------------------------


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the flags give (a flag not given changes nothing)."""
    changes: dict[str, Any] = {}
    if args.cron is not None:
        changes.update(cron=args.cron, interval=None)
    if args.every is not None:
        changes.update(interval=args.every, cron="", time_zone="")
    plain = {"time_zone": "time_zone", "jitter": "jitter", "overlap": "overlap_policy", "catchup": "catchup_policy",
             "description": "description", "queue": "queue", "priority": "priority",
             "max_attempts": "max_attempts", "timeout": "timeout", "dedupe_key": "dedupe_key",
             "concurrency_key": "concurrency_key", "webhook": "webhook_url"}
    for flag, name in plain.items():
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    if args.payload is not None:
        changes["payload"] = cli._read_payload(args.payload)
    if args.label is not None:
        changes["labels"] = dict(args.label)
    if args.webhook_event is not None:
        changes["webhook_events"] = tuple(args.webhook_event)
    if getattr(args, "kind", None) is not None:
        changes["kind"] = args.kind
    return changes


def _show(args: argparse.Namespace, schedule: Schedule, verb: str) -> int:
    if args.json:
        cli._print_json(schedule)
    else:
        print(f"{verb} {schedule.id}: {_timing(schedule.spec)}; " + _next(schedule))
    return cli.EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    """``jobwire schedules create``."""
    try:
        spec = ScheduleSpec(**_changes(args))
    except cli.UsageError as exc:
        cli._error(str(exc))
        return cli.EXIT_USAGE
    return cli._run(args, lambda client: _show(args, client.create_schedule(args.id, spec, paused=args.paused),
                                               "created"))


def cmd_update(args: argparse.Namespace) -> int:
    """``jobwire schedules update``: read, change the given fields, write."""
    try:
        changes = _changes(args)
    except cli.UsageError as exc:
        cli._error(str(exc))
        return cli.EXIT_USAGE

    def body(client: Client) -> int:
        current = client.get_schedule(args.id).spec
        return _show(args, client.update_schedule(args.id, dataclasses.replace(current, **changes)), "updated")

    return cli._run(args, body)


def cmd_list(args: argparse.Namespace) -> int:
    """``jobwire schedules list``."""

    def body(client: Client) -> int:
        rows: list[Schedule] = []
        found = client.list_schedules(page_size=min(args.limit, 1000) if args.limit > 0 else 0)
        try:
            for schedule in found:
                if 0 < args.limit <= len(rows):
                    break
                rows.append(schedule)
                if args.json:
                    cli._print_json(schedule)
        finally:
            found.close()
        if not args.json:
            print(cli._table(("ID", "TIMING", "NEXT", "STATE", "KIND", "LAST JOB"), [
                (s.id, _timing(s.spec), cli._when(s.next_fire_times[0] if s.next_fire_times else None),
                 ("paused" if s.paused else "active") + (" (config)" if s.from_config else ""), s.spec.kind,
                 s.last_job_id or "-") for s in rows]) if rows else "no schedules")
        return cli.EXIT_OK

    return cli._run(args, body)


def cmd_get(args: argparse.Namespace) -> int:
    """``jobwire schedules get``."""

    def body(client: Client) -> int:
        schedule = client.get_schedule(args.id)
        if args.json:
            cli._print_json(schedule)
        else:
            print(describe_schedule(schedule))
        return cli.EXIT_OK

    return cli._run(args, body)


def cmd_delete(args: argparse.Namespace) -> int:
    """``jobwire schedules delete``."""

    def body(client: Client) -> int:
        client.delete_schedule(args.id)
        if args.json:
            cli._print_json({"id": args.id, "deleted": True})
        else:
            print(f"deleted {args.id}")
        return cli.EXIT_OK

    return cli._run(args, body)


def cmd_pause(args: argparse.Namespace) -> int:
    """``jobwire schedules pause``."""
    return cli._run(args, lambda client: _show(args, client.pause_schedule(args.id), "paused"))


def cmd_resume(args: argparse.Namespace) -> int:
    """``jobwire schedules resume``."""
    return cli._run(args, lambda client: _show(args, client.resume_schedule(args.id), "resumed"))


def cmd_trigger(args: argparse.Namespace) -> int:
    """``jobwire schedules trigger``."""

    def body(client: Client) -> int:
        result = client.trigger_schedule(args.id, request_id=args.request_id)
        if args.json:
            cli._print_json(result)
        elif result.job is None:
            print(f"{args.id}: nothing enqueued")
        elif result.skipped:
            print(f"skipped: job {result.job.id} of {args.id} is still active [{result.job.state}] "
                  "(overlap policy SKIP)")
        else:
            print(f"enqueued {result.job.id} [{result.job.state}] from schedule {args.id}", flush=True)
        if not args.watch or result.job is None:
            return cli.EXIT_OK
        return cli._watch(client, result.job.id, args.json)

    return cli._run(args, body, cli.EXIT_ERROR if args.watch else 1)


# --- rendering -----------------------------------------------------------------------------------


def _seconds_text(value: timedelta | float | None) -> str:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value or 0)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _timing(spec: ScheduleSpec) -> str:
    if spec.cron:
        return f"cron {spec.cron}" + (f" ({spec.time_zone})" if spec.time_zone not in ("", "UTC") else "")
    return f"every {_seconds_text(spec.interval)}"


def _next(schedule: Schedule) -> str:
    if schedule.paused:
        return "paused"
    return f"next {cli._when(schedule.next_fire_times[0])}" if schedule.next_fire_times else "no next firing"


def describe_schedule(schedule: Schedule) -> str:
    """The ``jobwire schedules get`` text."""
    spec = schedule.spec
    lines = [
        f"id:          {schedule.id}" + ("  (declared in the server's config file)" if schedule.from_config else ""),
        f"timing:      {_timing(spec)}" + (f", jitter up to {_seconds_text(spec.jitter)}" if spec.jitter else ""),
        f"state:       {'paused' if schedule.paused else 'active'}",
        f"overlap:     {spec.overlap_policy}",
        f"catch-up:    {spec.catchup_policy}",
        f"job:         {spec.kind} in queue {spec.queue}, priority {spec.priority}, "
        f"{spec.max_attempts} attempts" + (f", timeout {_seconds_text(spec.timeout)}" if spec.timeout else ""),
    ]
    if spec.payload:
        lines.append(f"payload:     {cli._short(spec.payload if isinstance(spec.payload, bytes) else b'')}")
    if spec.labels:
        lines.append("labels:      " + ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())))
    if spec.dedupe_key:
        lines.append(f"dedupe key:  {spec.dedupe_key}")
    if spec.webhook_url:
        lines.append(f"webhook:     {spec.webhook_url} ({', '.join(spec.webhook_events)})")
    if spec.description:
        lines.append(f"description: {spec.description}")
    lines.append("next:        " + ("\n             ".join(cli._when(t) for t in schedule.next_fire_times)
                                    if schedule.next_fire_times else "-"))
    lines += [f"last fired:  {cli._when(schedule.last_fire_time)}",
              f"last job:    {schedule.last_job_id or '-'}",
              f"created:     {cli._when(schedule.create_time)}"]
    return "\n".join(lines)

