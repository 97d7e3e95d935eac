"""SQL of queue settings and the claim's queue controls (SQLite): plain functions on a connection,
run inside the transaction `SqliteJobStore.write` opens (the writes, the claim) or on the reader.

One process writes the file and every transaction begins with BEGIN IMMEDIATE, so the counts a
claim reads (RUNNING jobs, per key) and the bucket it spends cannot change under it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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

Conn = sqlite3.Connection
#: A candidate: (id, priority, run_at, queue).
Candidate = tuple[str, int, float, str]

_ORDER = "ORDER BY priority DESC, run_at, id"
_UPSERT = (f"INSERT INTO queues ({qrows.SELECT}) VALUES ({', '.join('?' * len(qrows.COLUMNS))}) "
           "ON CONFLICT (name) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in qrows.COLUMNS[1:]))


def get(conn: Conn, name: str) -> QueueSettings | None:
    row = conn.execute(f"SELECT {qrows.SELECT} FROM queues WHERE name = ?", (name,)).fetchone()
    return None if row is None else qrows.from_row(row)


def list_all(conn: Conn) -> list[QueueSettings]:
    return [qrows.from_row(row) for row in conn.execute(f"SELECT {qrows.SELECT} FROM queues ORDER BY name")]


def change(conn: Conn, name: str, build: Any, now: float) -> QueueSettings:
    after: QueueSettings = build(get(conn, name) or QueueSettings(name, create_time=now, update_time=now))
    conn.execute(_UPSERT, qrows.params(after))
    return after


def defaults(conn: Conn, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Queue → (default priority, default max attempts) of the queues that have a row."""
    if not queues:
        return {}
    found = conn.execute("SELECT name, default_priority, default_max_attempts FROM queues "
                         "WHERE name IN (SELECT value FROM json_each(?))", (json.dumps(list(queues)),))
    return {row[0]: (row[1], row[2]) for row in found}


def controls(conn: Conn) -> dict[str, QueueSettings]:
    """The queues a claim must treat on their own: paused, or with a limit."""
    found = conn.execute(f"SELECT {qrows.SELECT} FROM queues WHERE {qrows.CONTROLS}")
    return {row[0]: qrows.from_row(row) for row in found}


def running(conn: Conn, queue: str) -> int:
    return int(conn.execute("SELECT count(*) FROM jobs WHERE queue = ? AND state = 'RUNNING'", (queue,)).fetchone()[0])


def running_counts(conn: Conn, queue: str, key: str) -> tuple[int, int]:
    with_key = 0
    if key:
        with_key = int(conn.execute("SELECT count(*) FROM jobs WHERE queue = ? AND state = 'RUNNING' "
                                    "AND concurrency_key = ?", (queue, key)).fetchone()[0])
    return running(conn, queue), with_key


def scope_sql(scope: ClaimScope) -> tuple[str, list[Any]]:
    """The conditions of a claim's scope, to add to a WHERE clause, and their parameters."""
    if scope.include is None:
        if not scope.exclude:
            return "", []
        return " AND kind NOT IN (SELECT value FROM json_each(?))", [json.dumps(scope.exclude)]
    sql, args = " AND kind IN (SELECT value FROM json_each(?))", [json.dumps(scope.include)]
    if scope.queues:
        sql += " AND queue IN (SELECT value FROM json_each(?))"
        args.append(json.dumps(scope.queues))
    return sql, args


def candidates(conn: Conn, queue: str, room: int, settings: QueueSettings | None,
               scope: ClaimScope) -> list[Candidate]:
    """The best `room` QUEUED jobs of `queue` in `scope` that its key limit lets start."""
    if settings is None or settings.key_limit <= 0:
        where, args = scope_sql(scope)
        found = conn.execute(f"SELECT id, priority, run_at, queue FROM jobs WHERE state = 'QUEUED' AND queue = ?"
                             f"{where} {_ORDER} LIMIT ?", (queue, *args, room))
        return [tuple(row) for row in found]
    return _by_key(conn, queue, room, settings.key_limit, scope)


def _by_key(conn: Conn, queue: str, room: int, limit: int, scope: ClaimScope) -> list[Candidate]:
    """Candidates in claim order, passing over jobs whose key is saturated: keys saturated before
    the claim are left out by the query, keys that fill up during it are skipped as the pages are
    read (each page continues after the last row of the one before)."""
    keys = KeyRoom(limit, dict(conn.execute(
        "SELECT concurrency_key, count(*) FROM jobs WHERE queue = ? AND state = 'RUNNING' "
        "AND concurrency_key IS NOT NULL GROUP BY concurrency_key", (queue,)).fetchall()))
    taken: list[Candidate] = []
    page = max(4 * room, 64)
    after: tuple[int, float, str] | None = None
    while len(taken) < room:
        sql = ("SELECT id, priority, run_at, queue, concurrency_key FROM jobs WHERE state = 'QUEUED' AND queue = ? "
               "AND (concurrency_key IS NULL OR concurrency_key NOT IN (SELECT value FROM json_each(?)))")
        args: list[Any] = [queue, json.dumps(keys.saturated())]
        where, scope_args = scope_sql(scope)
        sql += where
        args.extend(scope_args)
        if after is not None:
            sql += " AND (-priority, run_at, id) > (?, ?, ?)"
            args.extend(after)
        found = conn.execute(f"{sql} {_ORDER} LIMIT ?", (*args, page)).fetchall()
        taken.extend(_admit(found, keys, room - len(taken)))
        if len(found) < page:
            break
        after = (-found[-1][1], found[-1][2], found[-1][0])
    return taken


def _admit(found: Iterable[Any], keys: KeyRoom, room: int) -> list[Candidate]:
    taken: list[Candidate] = []
    for row in found:
        if len(taken) == room:
            break
        if keys.take(row[4]):
            taken.append((row[0], row[1], row[2], row[3]))
    return taken


def spend(conn: Conn, now: float, limited: Mapping[str, QueueSettings], started: Mapping[str, int]) -> float | None:
    """Spend the tokens of the jobs the claim started; returns when a rate-limited queue whose
    QUEUED jobs wait for tokens next has one (None: none waits)."""
    wake: float | None = None
    for name, settings in limited.items():
        if settings.rate <= 0 or settings.paused:
            continue
        after = take_tokens(settings, now, started.get(name, 0))
        if started.get(name, 0):
            conn.execute("UPDATE queues SET tokens = ?, tokens_time = ? WHERE name = ?",
                         (after.tokens, after.tokens_time, name))
        if available_tokens(after, now) < 1.0 - 1e-9 and _has_queued(conn, name):
            due = next_token_time(after, now)
            wake = due if wake is None or (due is not None and due < wake) else wake
    return wake


def _has_queued(conn: Conn, queue: str) -> bool:
    return conn.execute("SELECT 1 FROM jobs WHERE state = 'QUEUED' AND queue = ? LIMIT 1", (queue,)).fetchone() \
        is not None


# ---------------------------------------------------------------------- the claim's candidates


def claim_candidates(conn: Conn, p: ClaimParams, controls: dict[str, QueueSettings],
                     scope: ClaimScope) -> list[Candidate]:
    """The best `limit` QUEUED jobs in `scope`: from the queues without limits in one query, and
    from each limited queue (a process limit, stored settings) at most its room, merged in claim order."""
    limited = sorted(set(p.queue_room) | set(controls))
    where, args = scope_sql(scope)
    found: list[Candidate] = [tuple(row) for row in conn.execute(
        "SELECT id, priority, run_at, queue FROM jobs WHERE state = 'QUEUED' "
        f"AND queue NOT IN (SELECT value FROM json_each(?)){where} {_ORDER} LIMIT ?",
        (json.dumps(limited), *args, p.limit))]
    for queue in limited:
        settings = controls.get(queue)
        room = min(p.queue_room.get(queue, p.limit), p.limit)
        if settings is not None and room > 0:
            room = min(room, start_room(settings, p.now, running(conn, queue) if settings.concurrency else 0))
        if room > 0:
            found += candidates(conn, queue, room, settings, scope)
    found.sort(key=lambda row: (-row[1], row[2], row[0]))
    return found[: p.limit]
