"""``jobwire queues ACTION``: pause, resume, show, list and limit queues.

Settings live in the server's database and hold on every replica. ``update`` sends only the flags
given; 0 removes a limit or a default.
"""

from __future__ import annotations

import argparse

from jobwire import cli
from jobwire.models import Queue, QueueSettings
from jobwire.sync import Client


def add_queue_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:
    """The ``queues`` command and its actions (each takes the connection flags)."""
    p = subparsers.add_parser(
        "queues", help="pause, resume and limit queues (rate, concurrency, concurrency keys)",
        description="Pause, resume, show, list and limit queues. Changes need the queues:write scope; list and "
                    "get need jobs:read.",
        epilog="examples:\n"
               "  jobwire queues pause media\n"
               "  jobwire queues update media --rate 50 --burst 10 --key-limit 1\n"
               "  jobwire queues resume media\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=summary, description=description, parents=[common],
                                  epilog=cli._CONNECTION_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)

    for name, summary, func in (
            ("pause", "start nothing more from a queue (it still takes enqueues)", cmd_pause),
            ("resume", "let a paused queue start jobs again", cmd_resume),
            ("get", "show a queue's settings and counts", cmd_get)):
        a = action(name, summary, summary[0].upper() + summary[1:] + ".")
        a.add_argument("name", metavar="NAME", help="queue name")
        a.set_defaults(func=func)

    a = action("list", "list queues", "List every queue that has settings or holds jobs, by name.")
    a.set_defaults(func=cmd_list)

    a = action("update", "change a queue's limits and defaults",
               "Change the settings of queue NAME given here; the others stay as they are. 0 removes a limit "
               "or a default.")
    a.add_argument("name", metavar="NAME", help="queue name")
    a.add_argument("--rate", type=float, metavar="N", help="jobs started per second, on every replica together")
    a.add_argument("--burst", type=int, metavar="N", help="jobs that may start at once (default: one second's worth)")
    a.add_argument("--concurrency", type=int, metavar="N", help="jobs of the queue running at once, on every replica")
    a.add_argument("--key-limit", type=int, metavar="N", help="jobs with the same concurrency key running at once")
    a.add_argument("--default-priority", type=int, metavar="N", help="priority of jobs enqueued without one")
    a.add_argument("--default-max-attempts", type=int, metavar="N", help="attempts of jobs enqueued without a number")
    a.set_defaults(func=cmd_update)


def _show(args: argparse.Namespace, queue: Queue, verb: str) -> int:
    if args.json:
        cli._print_json(queue)
    else:
        print(f"{verb} {queue.name}: {_summary(queue.settings)}")
    return cli.EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    """``jobwire queues pause``."""
    return cli._run(args, lambda client: _show(args, client.pause_queue(args.name), "paused"))


def cmd_resume(args: argparse.Namespace) -> int:
    """``jobwire queues resume``."""
    return cli._run(args, lambda client: _show(args, client.resume_queue(args.name), "resumed"))


def cmd_update(args: argparse.Namespace) -> int:
    """``jobwire queues update``."""
    changes = {"rate_limit": args.rate, "rate_burst": args.burst, "concurrency_limit": args.concurrency,
               "key_limit": args.key_limit, "default_priority": args.default_priority,
               "default_max_attempts": args.default_max_attempts}
    if all(value is None for value in changes.values()):
        cli._error("give at least one setting to change (see jobwire queues update --help)")
        return cli.EXIT_USAGE
    return cli._run(args, lambda client: _show(args, client.update_queue(args.name, **changes), "updated"))


def cmd_get(args: argparse.Namespace) -> int:
    """``jobwire queues get``."""

    def body(client: Client) -> int:
        queue = client.get_queue(args.name)
        if args.json:
            cli._print_json(queue)
        else:
            print(describe_queue(queue))
        return cli.EXIT_OK

    return cli._run(args, body)


def cmd_list(args: argparse.Namespace) -> int:
    """``jobwire queues list``."""

    def body(client: Client) -> int:
        queues = list(client.list_queues())
        if args.json:
            for queue in queues:
                cli._print_json(queue)
            return cli.EXIT_OK
        print(cli._table(("QUEUE", "STATE", "QUEUED", "RUNNING", "LIMITS"), [
            (q.name, "paused" if q.settings.paused else "running", q.stats.queued if q.stats else 0,
             q.stats.running if q.stats else 0, _limits(q.settings) or "-") for q in queues]) if queues
              else "no queues")
        return cli.EXIT_OK

    return cli._run(args, body)


# --- rendering -----------------------------------------------------------------------------------


def _limits(s: QueueSettings) -> str:
    parts = []
    if s.rate_limit:
        parts.append(f"rate {s.rate_limit:g}/s burst {s.rate_burst}")
    if s.concurrency_limit:
        parts.append(f"concurrency {s.concurrency_limit}")
    if s.key_limit:
        parts.append(f"key limit {s.key_limit}")
    return ", ".join(parts)


def _summary(s: QueueSettings) -> str:
    return ("paused" if s.paused else "running") + (f"; {_limits(s)}" if _limits(s) else "")


def describe_queue(queue: Queue) -> str:
    """The ``jobwire queues get`` text."""
    s, stats = queue.settings, queue.stats
    replica = "-" if not queue.replica_concurrency_limit else (
        f"{queue.replica_concurrency_limit} " + ("(on every replica)" if queue.replica_limit_global
                                                 else "(this server only)"))
    lines = [
        f"queue:             {queue.name}",
        f"state:             {'paused' if s.paused else 'running'}",
        f"rate limit:        {f'{s.rate_limit:g} jobs/s, burst {s.rate_burst}' if s.rate_limit else '-'}",
        f"concurrency:       {s.concurrency_limit or '-'}",
        f"server limit:      {replica}",
        f"key limit:         {s.key_limit or '-'}",
        f"default priority:  {s.default_priority or '-'}",
        f"default attempts:  {s.default_max_attempts or '-'}",
    ]
    if stats is not None:
        lines.append(f"jobs:              {stats.queued} queued, {stats.running} running, {stats.scheduled} scheduled, "
                     f"{stats.retrying} retrying")
    lines.append(f"changed:           {cli._when(queue.update_time)}")
    return "\n".join(lines)
