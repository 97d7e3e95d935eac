"""SQL of queue settings and the claim's queue controls (PostgreSQL): coroutines on the writer
connection inside the transaction `PostgresJobStore.write` opens (the writes, the claim) or on a
pooled reader.

Replicas claim from the same queues. A claim locks the settings row of every limited queue it
claims from (`FOR UPDATE`, in name order, so two claims cannot deadlock on each other's rows)
before it counts the queue's RUNNING jobs (per key) and spends its bucket; the lock is held until
the commit, so a replica claiming the same queue waits and then, its next statement reading the
latest commit, counts what the first one started. Candidate rows are still taken with
`FOR UPDATE SKIP LOCKED`, as everywhere. A `--queue-concurrency` limit counted on every replica
(`--queue-concurrency-global`) has no row to lock: it takes the queue's advisory lock instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from jobwire_server.domain.models import evolve
from jobwire_server.domain.queues import (
    KeyRoom,
    QueueSettings,
    available_tokens,
    next_token_time,
    start_room,
    take_tokens,
)
from jobwire_server.store import queue_rows as qrows
from jobwire_server.store.base import ClaimParams, ClaimScope

Conn = asyncpg.Connection
#: A candidate: (id, priority, run_at, queue).
Candidate = tuple[str, int, float, str]

_ORDER = "ORDER BY priority DESC, run_at, id"
_TYPES = ("text", "bool", "int4", "float8", "int4", "int4", "int4", "int4", "float8", "float8", "timestamptz",
          "timestamptz")
_INSERT = (f"INSERT INTO queues ({qrows.SELECT}) VALUES ("
           + ", ".join(f"${n}::{t}" for n, t in enumerate(_TYPES, 1)) + ")")
_UPSERT = f"{_INSERT} ON CONFLICT (name) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in qrows.COLUMNS[1:])


async def get(conn: Conn, name: str) -> QueueSettings | None:
    row = await conn.fetchrow(f"SELECT {qrows.SELECT} FROM queues WHERE name = $1", name)
    return None if row is None else qrows.from_row(row)


async def list_all(conn: Conn) -> list[QueueSettings]:
    return [qrows.from_row(row) for row in await conn.fetch(f"SELECT {qrows.SELECT} FROM queues ORDER BY name")]


async def change(conn: Conn, name: str, build: Any, now: float) -> QueueSettings:
    """Lock the row (made first when missing, so two replicas changing a new queue take turns too)."""
    fresh = QueueSettings(name, create_time=now, update_time=now)
    await conn.execute(f"{_INSERT} ON CONFLICT (name) DO NOTHING", *qrows.params(fresh))
    row = await conn.fetchrow(f"SELECT {qrows.SELECT} FROM queues WHERE name = $1 FOR UPDATE", name)
    if row is None:  # cannot happen: the row was made above, in this transaction
        raise RuntimeError(f"queue {name} has no settings row")
    after: QueueSettings = build(qrows.from_row(row))
    await conn.execute(_UPSERT, *qrows.params(after))
    return after


async def controls(conn: Conn) -> dict[str, QueueSettings]:
    """The queues a claim must treat on their own: paused ones (not locked: a claim only leaves
    them alone), and those with a limit. Of these, the ones with QUEUED jobs are locked in name
    order until the commit and read again under the lock (another replica's claim may have spent
    tokens meanwhile); one with nothing waiting is left out of this claim like a paused one, unlocked,
    so claims of other replicas do not wait for it (a job enqueued to it meanwhile is claimed by the
    claim its own commit makes). Without any such row (the common case) this is one small query."""
    found = {row[0]: qrows.from_row(row)
             for row in await conn.fetch(f"SELECT {qrows.SELECT} FROM queues WHERE {qrows.CONTROLS}")}
    limited = sorted(name for name, settings in found.items() if not settings.paused)
    if limited:
        locked = {row[0]: qrows.from_row(row) for row in await conn.fetch(
            f"SELECT {qrows.SELECT} FROM queues WHERE name = ANY($1::text[]) "
            "AND EXISTS (SELECT 1 FROM jobs WHERE jobs.state = 'QUEUED' AND jobs.queue = queues.name) "
            "ORDER BY name FOR UPDATE", limited)}
        for name in limited:
            found[name] = locked.get(name) or evolve(found[name], paused=True)
    return {name: settings for name, settings in found.items() if settings.controls_claims}


async def running(conn: Conn, queue: str) -> int:
    value: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'RUNNING'", queue)
    return value


async def running_counts(conn: Conn, queue: str, key: str) -> tuple[int, int]:
    with_key = 0
    if key:
        with_key = await conn.fetchval("SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'RUNNING' "
                                       "AND concurrency_key = $2", queue, key)
    return await running(conn, queue), with_key


def scope_sql(scope: ClaimScope, first: int) -> tuple[str, list[Any]]:
    """The conditions of a claim's scope, to add to a WHERE clause, and their parameters, numbered
    from `first`."""
    if scope.include is None:
        return f" AND kind <> ALL(${first}::text[])", [list(scope.exclude)]
    sql, args = f" AND kind = ANY(${first}::text[])", [list(scope.include)]
    if scope.queues:
        sql += f" AND queue = ANY(${first + 1}::text[])"
        args.append(list(scope.queues))
    return sql, args


async def candidates(conn: Conn, queue: str, room: int, settings: QueueSettings | None,
                     scope: ClaimScope) -> list[Candidate]:
    """The best `room` QUEUED jobs of `queue` in `scope` that its key limit lets start, locked (SKIP LOCKED)."""
    if settings is None or settings.key_limit <= 0:
        where, args = scope_sql(scope, 3)
        found = await conn.fetch(f"SELECT id, priority, run_at, queue FROM jobs WHERE state = 'QUEUED' AND queue = $1"
                                 f"{where} {_ORDER} LIMIT $2 FOR UPDATE SKIP LOCKED", queue, room, *args)
        return [(row[0], row[1], row[2], row[3]) for row in found]
    return await _by_key(conn, queue, room, settings.key_limit, scope)


async def _by_key(conn: Conn, queue: str, room: int, limit: int, scope: ClaimScope) -> list[Candidate]:
    """As the SQLite store's: keys saturated before the claim are left out by the query, keys that
    fill up during it are skipped page by page."""
    counted = await conn.fetch("SELECT concurrency_key, count(*) FROM jobs WHERE queue = $1 AND state = 'RUNNING' "
                               "AND concurrency_key IS NOT NULL GROUP BY concurrency_key", queue)
    keys = KeyRoom(limit, {row[0]: row[1] for row in counted})
    taken: list[Candidate] = []
    page = max(4 * room, 64)
    after: tuple[int, float, str] | None = None
    while len(taken) < room:
        sql = ("SELECT id, priority, run_at, queue, concurrency_key FROM jobs WHERE state = 'QUEUED' AND queue = $1 "
               "AND (concurrency_key IS NULL OR concurrency_key <> ALL($2::text[]))")
        args: list[Any] = [queue, keys.saturated(), page]
        if after is not None:
            sql += " AND (-priority, run_at, id) > ($4::int4, $5::timestamptz, $6::uuid)"
            args.extend(after)
        where, scope_args = scope_sql(scope, len(args) + 1)
        found = await conn.fetch(f"{sql}{where} {_ORDER} LIMIT $3 FOR UPDATE SKIP LOCKED", *args, *scope_args)
        for row in found:
            if len(taken) == room:
                break
            if keys.take(row[4]):
                taken.append((row[0], row[1], row[2], row[3]))
        if len(found) < page:
            break
        after = (-found[-1][1], found[-1][2], found[-1][0])
    return taken


async def spend(conn: Conn, now: float, limited: Mapping[str, QueueSettings],
                started: Mapping[str, int]) -> float | None:
    """Spend the tokens of the jobs the claim started (rows locked by `controls`); returns when a
    rate-limited queue whose QUEUED jobs wait for tokens next has one."""
    wake: float | None = None
    for name, settings in limited.items():
        if settings.rate <= 0 or settings.paused:
            continue
        after = take_tokens(settings, now, started.get(name, 0))
        if started.get(name, 0):
            await conn.execute("UPDATE queues SET tokens = $1, tokens_time = $2 WHERE name = $3",
                               after.tokens, after.tokens_time, name)
        if available_tokens(after, now) < 1.0 - 1e-9 and await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'QUEUED' AND queue = $1)", name):
            due = next_token_time(after, now)
            wake = due if wake is None or (due is not None and due < wake) else wake
    return wake


# ---------------------------------------------------------------------- the claim's candidates


async def claim_candidates(conn: Conn, p: ClaimParams, controls: dict[str, QueueSettings],
                           scope: ClaimScope) -> list[str]:
    """The best `limit` QUEUED jobs in `scope` no other transaction holds: from the queues without
    limits in one query, and from each limited queue (a process limit, stored settings) at most its
    room; their rows stay locked until the commit."""
    limited = sorted(set(p.queue_room) | set(controls))
    where, args = scope_sql(scope, 3)
    found: list[tuple[str, int, float, str]] = [(row[0], row[1], row[2], "") for row in await conn.fetch(
        f"SELECT id, priority, run_at FROM jobs WHERE state = 'QUEUED' AND queue <> ALL($1::text[]){where} {_ORDER} "
        "LIMIT $2 FOR UPDATE SKIP LOCKED", limited, p.limit, *args)]
    for queue in limited:
        room = await _room(conn, p, queue, controls.get(queue))
        if room > 0:
            found += await candidates(conn, queue, room, controls.get(queue), scope)
    found.sort(key=lambda row: (-row[1], row[2], row[0]))
    return [row[0] for row in found[: p.limit]]


async def _room(conn: Conn, p: ClaimParams, queue: str, settings: QueueSettings | None) -> int:
    """How many jobs of a limited queue may start: its process limit (global on all replicas
    with `global_limits`), and its stored settings (counted under the row lock `controls` took)."""
    room = min(p.queue_room.get(queue, p.limit), p.limit)
    if room > 0 and queue in p.global_limits and queue in p.queue_room:
        room = min(room, await _global_room(conn, queue, p.global_limits[queue]))
    if room > 0 and settings is not None:
        room = min(room, start_room(settings, p.now, await running(conn, queue) if settings.concurrency else 0))
    return room


async def _global_room(conn: Conn, queue: str, limit: int) -> int:
    """How many more jobs of `queue` may start on all replicas together. The queue's advisory lock,
    held until the commit, makes replicas claiming from it take turns, each counting the jobs the
    others' committed claims started."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", QUEUE_LOCKS, queue)
    running: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'RUNNING'", queue)
    return max(0, limit - running)


#: The first key of the per-queue advisory locks ("jobw").
QUEUE_LOCKS = 0x6A6F6277
