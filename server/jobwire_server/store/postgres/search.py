"""Which jobs a `JobQuery` matches (PostgreSQL): the listing of ListJobs and of the bulk actions, and
their count. Coroutines on a pooled reader connection.

Jobs are listed newest first (by id). The planner picks the index from its statistics: the labels'
GIN index (`jobs_labels`, jsonb_ops: `@>` for exact and any-of labels, `?` for a key that must be
present), `jobs_by_finish` (state, finish_time) for a finish-time range, or the primary key in id
order when the matches are dense. One case it cannot see: a narrow finish-time range far back in
time, where it would walk the ids from the newest expecting to meet matches soon (finish times
follow ids). So a finish-time range holding at most `FINISH_RANGE_LIMIT` jobs (counted first, up to
that limit) is read from its index and sorted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg

from jobwire_server.domain.ids import first_id_at
from jobwire_server.domain.queries import JobQuery

Conn = asyncpg.Connection

#: A finish-time range holding at most this many jobs is read from its index; see the module.
FINISH_RANGE_LIMIT = 50_000


class _Where:
    def __init__(self) -> None:
        self.terms: list[str] = []
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    @property
    def sql(self) -> str:
        return " AND ".join(self.terms) if self.terms else "true"


async def job_ids(conn: Conn, query: JobQuery, limit: int) -> list[str]:
    """Up to `limit` ids of matching jobs, newest first, after the query's cursor."""
    if _matches_nothing(query):
        return []
    where = _conditions(query, cursor=True)
    if await _finish_range_is_narrow(conn, query):
        sql = (f"WITH found AS MATERIALIZED (SELECT id FROM jobs WHERE {where.sql}) "
               f"SELECT id FROM found ORDER BY id DESC LIMIT {where.param(limit)}")
    else:
        sql = f"SELECT id FROM jobs WHERE {where.sql} ORDER BY id DESC LIMIT {where.param(limit)}"
    return [row[0] for row in await conn.fetch(sql, *where.params)]


async def count_jobs(conn: Conn, query: JobQuery) -> int:
    """How many jobs match the query's filters (not its cursor)."""
    if _matches_nothing(query):
        return 0
    where = _conditions(query, cursor=False)
    return int(await conn.fetchval(f"SELECT count(*) FROM jobs WHERE {where.sql}", *where.params))


def _matches_nothing(query: JobQuery) -> bool:
    has_finish = query.finished_after is not None or query.finished_before is not None
    return has_finish and not query.finish_states


async def _finish_range_is_narrow(conn: Conn, query: JobQuery) -> bool:
    if query.finished_after is None and query.finished_before is None:
        return False
    where = _Where()
    _finish_terms(query, where)
    found = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM jobs WHERE {where.sql} LIMIT {where.param(FINISH_RANGE_LIMIT)}) AS r",
        *where.params)
    return int(found) < FINISH_RANGE_LIMIT


def _finish_terms(query: JobQuery, where: _Where) -> None:
    # The states a finished job can be in come first: they are the index's leading column.
    where.terms.append(f"state = ANY({where.param(sorted(s.value for s in query.finish_states))}::text[])")
    if query.finished_after is not None:
        where.terms.append(f"finish_time >= {where.param(query.finished_after)}")
    if query.finished_before is not None:
        where.terms.append(f"finish_time < {where.param(query.finished_before)}")


def _conditions(query: JobQuery, *, cursor: bool) -> _Where:
    where = _Where()
    add, param = where.terms.append, where.param
    if query.finished_after is not None or query.finished_before is not None:
        _finish_terms(query, where)
    elif query.states:
        add(f"state = ANY({param(sorted(s.value for s in query.states))}::text[])")
    for column, value in (("queue", query.queue), ("kind", query.kind)):
        if value:
            add(f"{column} = {param(value)}")
    if query.labels or query.label_keys or query.label_in:
        _label_terms(query, add, param)
    if query.created_after is not None:
        # A job's id is never older than its create time: the ids before that time need no look.
        add(f"id >= {param(first_id_at(query.created_after))}::uuid")
        add(f"create_time >= {param(query.created_after)}")
    if query.created_before is not None:
        add(f"create_time < {param(query.created_before)}")
    if cursor and query.after_id:
        add(f"id < {param(query.after_id)}::uuid")
    return where


def _label_terms(query: JobQuery, add: Callable[[str], None], param: Callable[[Any], str]) -> None:
    # `labels <> '{}'` lets the planner use the partial index of labelled jobs.
    add("labels <> '{}'")
    if query.labels:
        add(f"labels @> {param(json.dumps(dict(sorted(query.labels.items()))))}::jsonb")
    for key in sorted(query.label_keys):
        add(f"labels ? {param(key)}")
    for key, values in sorted(query.label_in.items()):
        either = " OR ".join(f"labels @> {param(json.dumps({key: value}))}::jsonb" for value in sorted(values))
        add(f"({either})")
