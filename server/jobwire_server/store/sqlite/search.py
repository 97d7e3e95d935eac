"""Which jobs a `JobQuery` matches (SQLite): the listing of ListJobs and of the bulk actions, and
their count. Plain functions on the reader connection.

Jobs are listed newest first (by id). How the matches are found depends on the filters, so that a
page over a million jobs costs a bounded number of index steps rather than a scan:

- a finish-time range holding at most `FINISH_RANGE_LIMIT` jobs (counted first, up to that limit) is
  read from `jobs_by_finish` (state, finish_time) and sorted; a wider one is left to the id order,
  where its matches are dense;
- otherwise a label filter drives: its rows in `job_labels` come in job id order from
  `job_labels_value` (key, value, job_id) for an exact label, one merged stream per value for an
  any-of filter, or `job_labels_key` (key, job_id) for a key that must be present; each candidate's
  other filters are checked on its row. When the label is common and a queue is given, the two are
  counted (up to `QUEUE_SCAN_LIMIT`) and the queue's jobs (`jobs_by_state`: queue, state) are read
  and sorted instead if they are fewer;
- otherwise the jobs are read in id order (from `created_after`'s first possible id, when given).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from jobwire_server.domain.ids import first_id_at
from jobwire_server.domain.queries import JobQuery

Conn = sqlite3.Connection

#: A finish-time range holding at most this many jobs is read from its index; see the module.
FINISH_RANGE_LIMIT = 50_000
#: A label filter matching more jobs than this is compared with the queue filter; see the module.
COMMON_LABEL = 2_000
QUEUE_SCAN_LIMIT = 20_000

_HAS_LABEL = "EXISTS (SELECT 1 FROM job_labels AS x WHERE x.job_id = j.id AND x.key = ?"


@dataclass
class _Where:
    terms: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, term: str, *params: Any) -> None:
        self.terms.append(term)
        self.params.extend(params)

    @property
    def sql(self) -> str:
        return " AND ".join(self.terms) if self.terms else "1 = 1"


@dataclass(frozen=True)
class _Driver:
    """Where the candidates come from: an exact label, an any-of label, a label key, or None."""

    kind: str
    key: str = ""
    values: tuple[str, ...] = ()


def job_ids(conn: Conn, query: JobQuery, limit: int) -> list[str]:
    """Up to `limit` ids of matching jobs, newest first, after the query's cursor."""
    if _matches_nothing(query):
        return []
    if _finish_range_is_narrow(conn, query):
        where = _conditions(query, None, cursor=True)
        sql = f"SELECT j.id FROM jobs AS j INDEXED BY jobs_by_finish WHERE {where.sql} ORDER BY j.id DESC LIMIT ?"
        return [row[0] for row in conn.execute(sql, (*where.params, limit))]
    driver = _driver(query)
    if driver is None or _queue_is_narrower(conn, query, driver):
        where = _conditions(query, None, cursor=True)
        index = "INDEXED BY jobs_by_state " if driver is not None else ""
        sql = f"SELECT j.id FROM jobs AS j {index}WHERE {where.sql} ORDER BY j.id DESC LIMIT ?"
        return [row[0] for row in conn.execute(sql, (*where.params, limit))]
    sql, params = _label_select(query, driver, cursor=True)
    return [row[0] for row in conn.execute(f"{sql} ORDER BY 1 DESC LIMIT ?", (*params, limit))]


def count_jobs(conn: Conn, query: JobQuery) -> int:
    """How many jobs match the query's filters (not its cursor)."""
    if _matches_nothing(query):
        return 0
    if query.finished_after is not None or query.finished_before is not None:
        where = _conditions(query, None, cursor=False)
        sql = f"SELECT count(*) FROM jobs AS j INDEXED BY jobs_by_finish WHERE {where.sql}"
        return int(conn.execute(sql, where.params).fetchone()[0])
    driver = _driver(query)
    if driver is None:
        where = _conditions(query, None, cursor=False)
        return int(conn.execute(f"SELECT count(*) FROM jobs AS j WHERE {where.sql}", where.params).fetchone()[0])
    sql, params = _label_select(query, driver, cursor=False)
    return int(conn.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0])


def _matches_nothing(query: JobQuery) -> bool:
    has_finish = query.finished_after is not None or query.finished_before is not None
    return has_finish and not query.finish_states


def _finish_range_is_narrow(conn: Conn, query: JobQuery) -> bool:
    if query.finished_after is None and query.finished_before is None:
        return False
    where = _Where()
    _finish_terms(query, where)
    found = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM jobs AS j INDEXED BY jobs_by_finish WHERE {where.sql} LIMIT ?)",
        (*where.params, FINISH_RANGE_LIMIT)).fetchone()[0]
    return int(found) < FINISH_RANGE_LIMIT


def _queue_is_narrower(conn: Conn, query: JobQuery, driver: _Driver) -> bool:
    """Whether the queue (and states) filter holds fewer jobs than a common driving label."""
    if not query.queue:
        return False
    labelled, params = _label_select(query, driver, cursor=False, bare=True)
    count = "SELECT count(*) FROM (SELECT 1 FROM ({}) LIMIT ?)"
    matches = int(conn.execute(count.format(labelled), (*params, QUEUE_SCAN_LIMIT)).fetchone()[0])
    if matches <= COMMON_LABEL:
        return False
    states = f" AND state IN ({_states_sql(query)})" if query.finish_states else ""
    in_queue = int(conn.execute(count.format(f"SELECT 1 FROM jobs INDEXED BY jobs_by_state WHERE queue = ?{states}"),
                                (query.queue, matches)).fetchone()[0])
    return in_queue < matches


def _finish_terms(query: JobQuery, where: _Where) -> None:
    # The states a finished job can be in come first: they are the index's leading column.
    where.add(f"j.state IN ({_states_sql(query)})")
    if query.finished_after is not None:
        where.add("j.finish_time >= ?", query.finished_after)
    if query.finished_before is not None:
        where.add("j.finish_time < ?", query.finished_before)


def _states_sql(query: JobQuery) -> str:
    # State names are the enum's own identifiers: inlined, so the planner sees the list.
    return ", ".join(f"'{state.value}'" for state in sorted(query.finish_states))


def _driver(query: JobQuery) -> _Driver | None:
    """The label filter that drives the listing: an exact one, else an any-of, else a key."""
    if query.labels:
        key = min(query.labels)
        return _Driver("exact", key, (query.labels[key],))
    if query.label_in:
        key = min(query.label_in, key=lambda k: (len(query.label_in[k]), k))
        return _Driver("in", key, tuple(sorted(query.label_in[key])))
    if query.label_keys:
        return _Driver("key", min(query.label_keys))
    return None


def _conditions(query: JobQuery, driver: _Driver | None, *, cursor: bool, id_column: str = "j.id") -> _Where:
    """Every filter as terms on the job row `j` (the driving label's own filter left out)."""
    where = _Where()
    if query.finished_after is not None or query.finished_before is not None:
        _finish_terms(query, where)
    elif query.states:
        where.add(f"j.state IN ({_states_sql(query)})")
    if query.queue:
        where.add("j.queue = ?", query.queue)
    if query.kind:
        where.add("j.kind = ?", query.kind)
    _label_terms(query, driver, where)
    if query.created_after is not None:
        # A job's id is never older than its create time: the ids before that time need no look.
        where.add(f"{id_column} >= ?", first_id_at(query.created_after))
        where.add("j.create_time >= ?", query.created_after)
    if query.created_before is not None:
        where.add("j.create_time < ?", query.created_before)
    if cursor and query.after_id:
        where.add(f"{id_column} < ?", query.after_id)
    return where


def _label_terms(query: JobQuery, driver: _Driver | None, where: _Where) -> None:
    """Each label filter as a look-up of the job's own label rows (primary key: job_id, key)."""
    def driving(kind: str, key: str) -> bool:
        return driver is not None and driver.kind == kind and driver.key == key

    for key, value in sorted(query.labels.items()):
        if not driving("exact", key):
            where.add(f"{_HAS_LABEL} AND x.value = ?)", key, value)
    for key, values in sorted(query.label_in.items()):
        if not driving("in", key):
            where.add(f"{_HAS_LABEL} AND x.value IN (SELECT value FROM json_each(?)))", key, json.dumps(sorted(values)))
    for key in sorted(query.label_keys):
        if not driving("key", key):
            where.add(f"{_HAS_LABEL})", key)


def _label_select(query: JobQuery, driver: _Driver, *, cursor: bool, bare: bool = False) -> tuple[str, list[Any]]:
    """SELECT of the matching ids driven by one label filter's index, in job id order per arm (an
    any-of filter has one arm per value, merged by the caller's ORDER BY). `bare`: the label's own
    rows only, the other filters left out."""
    where = _Where() if bare else _conditions(query, driver, cursor=cursor, id_column="l.job_id")
    arms: list[str] = []
    params: list[Any] = []
    head = ("SELECT l.job_id AS id FROM job_labels AS l WHERE l.key = ?" if bare else
            "SELECT l.job_id AS id FROM job_labels AS l CROSS JOIN jobs AS j ON j.id = l.job_id WHERE l.key = ?")
    if driver.kind == "key":
        arms.append(f"{head} AND {where.sql}")
        params += [driver.key, *where.params]
    for value in driver.values:
        arms.append(f"{head} AND l.value = ? AND {where.sql}")
        params += [driver.key, value, *where.params]
    return " UNION ALL ".join(arms), params
