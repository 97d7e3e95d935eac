"""The SQLite floors: what the same rows cost with nothing but the standard `sqlite3` module.

Same schema (the server's own migrations), same pragmas (WAL, the run's synchronous mode), one
connection, no event loop, no threads, rows built before the clock starts where they can be.
These bound what the server can reach: it writes the same rows, plus everything around them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from jobwire_server.domain.ids import new_job_id
from jobwire_server.store.sqlite.schema import MIGRATIONS

_INSERT_JOB = (
    "INSERT INTO jobs (id, queue, kind, payload, priority, state, attempt, uncounted_attempts, max_attempts, "
    "timeout, progress_pct, progress_msg, error, error_history, dedupe_key, labels, webhook, cancel_requested, "
    "cancel_reason, trace_parent, seq, create_time, update_time, run_at, start_time, finish_time) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_PHASE = ("INSERT INTO phases (job_id, idx, name, state, progress_pct, progress_msg, result, error, "
                 "start_time, finish_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_EVENT = "INSERT INTO events (job_id, seq, type, time, phase, detail) VALUES (?, ?, ?, ?, ?, ?)"

# The claim the server's group commit makes (store/sqlite/writes.py), for `limit` ready jobs.
_CLAIM = (
    "UPDATE jobs SET state = 'RUNNING', attempt = attempt + 1, seq = seq + 2, start_time = ?, finish_time = NULL, "
    "update_time = ?, lease_owner = ?, lease_expires = ? WHERE id IN ("
    "  SELECT id FROM jobs WHERE state = 'QUEUED' ORDER BY priority DESC, run_at, id LIMIT ?) "
    "RETURNING id, seq, attempt")
_PHASE_RUNNING = "UPDATE phases SET state = 'RUNNING', start_time = ? WHERE job_id = ? AND idx = 0"
# A guarded completion, as the server writes one (`WHERE state = ? AND attempt = ?`).
_COMPLETE = (
    "UPDATE jobs SET state = 'SUCCEEDED', progress_pct = 100, seq = ?, finish_time = ?, update_time = ?, "
    "lease_owner = NULL, lease_expires = NULL WHERE id = ? AND state = 'RUNNING' AND attempt = ?")
_PHASE_DONE = ("UPDATE phases SET state = 'SUCCEEDED', progress_pct = 100, result = ?, finish_time = ? "
               "WHERE job_id = ? AND idx = 0")


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", f"synchronous = {synchronous}", "foreign_keys = ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def claim_and_complete(path: str, synchronous: str, batch: int) -> tuple[int, float]:
    """Drain the prefilled database at `path`: each transaction claims `batch` QUEUED jobs with one
    UPDATE … RETURNING and completes them (job row, phase row, the four events a noop job writes:
    STARTED, PHASE_STARTED, PHASE_SUCCEEDED, SUCCEEDED), one commit per batch. (jobs, seconds)."""
    conn = connect(path, synchronous)
    try:
        done = 0
        started = time.perf_counter()
        while True:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            claimed = conn.execute(_CLAIM, (now, now, "floor", now + 30, batch)).fetchall()
            if not claimed:
                conn.execute("COMMIT")
                break
            conn.executemany(_PHASE_RUNNING, [(now, job_id) for job_id, _, _ in claimed])
            events: list[tuple[Any, ...]] = []
            for job_id, seq, _ in claimed:
                events += [(job_id, seq - 1, "STARTED", now, "", ""), (job_id, seq, "PHASE_STARTED", now, "run", "")]
            finished = time.time()
            conn.executemany(_COMPLETE, [(seq + 2, finished, finished, job_id, attempt)
                                         for job_id, seq, attempt in claimed])
            conn.executemany(_PHASE_DONE, [(b"x", finished, job_id) for job_id, _, _ in claimed])
            for job_id, seq, _ in claimed:
                events += [(job_id, seq + 1, "PHASE_SUCCEEDED", finished, "run", ""),
                           (job_id, seq + 2, "SUCCEEDED", finished, "", "")]
            conn.executemany(_INSERT_EVENT, events)
            conn.execute("COMMIT")
            done += len(claimed)
        return done, time.perf_counter() - started
    finally:
        conn.close()


def create_schema(path: str, synchronous: str) -> None:
    conn = connect(path, synchronous)
    try:
        for number, script in enumerate(MIGRATIONS):
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number + 1};\nCOMMIT;")
    finally:
        conn.close()


def batched_insert(path: str, synchronous: str, size: int, batches: int) -> tuple[int, float, dict[str, float]]:
    """Insert `batches` batches of `size` new noop jobs (job row, phase row, ENQUEUED event; ids
    shaped like the server's, time-ordered), each batch one transaction of three executemany
    calls, rows built beforehand. (jobs, seconds, µs per job spent on each table and the commit)."""
    create_schema(path, synchronous)
    now = time.time()
    prepared = []
    for _ in range(batches):
        ids = [new_job_id(now) for _ in range(size)]
        prepared.append((
            [(i, "default", "noop", b"x", 0, "QUEUED", 0, 0, 3, 0.0, 0.0, "", None, "[]", None, "{}",
              None, 0, "", "", 1, now, now, now, None, None) for i in ids],
            [(i, 0, "run", "PENDING", 0.0, "", b"", None, None, None) for i in ids],
            [(i, 1, "ENQUEUED", now, "", "") for i in ids]))
    spent = dict.fromkeys(("jobs", "phases", "events", "commit"), 0.0)
    conn = connect(path, synchronous)
    try:
        started = time.perf_counter()
        for jobs, phases, events in prepared:
            conn.execute("BEGIN IMMEDIATE")
            mark = time.perf_counter()
            for table, sql, params in (("jobs", _INSERT_JOB, jobs), ("phases", _INSERT_PHASE, phases),
                                       ("events", _INSERT_EVENT, events)):
                conn.executemany(sql, params)
                spent[table] += time.perf_counter() - mark
                mark = time.perf_counter()
            conn.execute("COMMIT")
            spent["commit"] += time.perf_counter() - mark
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    total = size * batches
    return total, elapsed, {f"{key}_us_per_job": value / total * 1e6 for key, value in spent.items()}
