"""The tables of a jobwire database as `jobwire copy` moves them from one store to another.

Both stores hold the same eight tables with the same columns; only the column types differ (SQLite
keeps times as REAL epoch seconds, JSON as TEXT and flags as 0/1; PostgreSQL has timestamptz,
jsonb, uuid and boolean). The reading side (`store/sqlite/dump.py`) yields rows in the column
order named here, with Python values: str, int, float (times as epoch seconds), bytes, bool for
flags, None; the writing side (`store/postgres/load.py`) takes them as they come. Columns only one
store has (PostgreSQL's events `id` and `xid`, its `leaders` and `jobwire_schema` tables) are
its own, filled by its defaults. SQLite's `job_labels` is not copied either: it is derived from the
jobs' labels (a trigger writes it), and PostgreSQL indexes the labels column itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobwire_server.store.rows import JOB_COLUMNS


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    #: The primary key: rows are read in its order.
    key: tuple[str, ...]
    #: Columns holding a yes/no value (0/1 in SQLite).
    flags: frozenset[str] = frozenset()
    #: The column whose values are counted one by one when a copy is checked.
    state: str = ""


#: In the order they are written (phases refer to jobs).
TABLES: tuple[Table, ...] = (
    Table("jobs", (*JOB_COLUMNS, "lease_owner", "lease_expires"), ("id",), frozenset({"cancel_requested"}),
          state="state"),
    Table("phases", ("job_id", "idx", "name", "state", "progress_pct", "progress_msg", "result", "error",
                     "start_time", "finish_time"), ("job_id", "idx")),
    Table("events", ("job_id", "seq", "type", "time", "phase", "detail"), ("job_id", "seq")),
    Table("requests", ("request_id", "fingerprint", "job_id", "expires"), ("request_id",)),
    Table("deliveries", ("id", "job_id", "event_seq", "event_type", "url", "body", "state", "attempts", "next_at",
                         "lease_until", "create_time", "update_time", "last_error", "gone"), ("id",),
          frozenset({"gone"}), state="state"),
    Table("delivery_attempts", ("delivery_id", "number", "job_id", "time", "url", "status_code", "latency",
                                "response", "error"), ("delivery_id", "number")),
    Table("schedules", ("id", "spec", "paused", "from_config", "next_fire", "last_fire", "last_job_id",
                        "create_time", "update_time"), ("id",), frozenset({"paused", "from_config"})),
    Table("kinds", ("name", "phases", "queue", "max_attempts", "timeout", "retry_base_delay", "retry_max_delay",
                    "declare_time"), ("name",)),
    Table("queues", ("name", "paused", "concurrency", "rate", "burst", "key_limit", "default_priority",
                     "default_max_attempts", "tokens", "tokens_time", "create_time", "update_time"), ("name",),
          frozenset({"paused"})),
)


@dataclass(frozen=True)
class Census:
    """What a database holds, counted: rows per table, and rows per state of the tables that have
    one (jobs, deliveries). Two databases holding the same copy have equal censuses."""

    rows: dict[str, int] = field(default_factory=dict)
    #: table → state → rows
    states: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.rows.values())

    def differences(self, target: Census) -> list[str]:
        """How `target`, a copy of this database, differs from it: one phrase per count that does
        not match (empty when all do)."""
        found = [f"{table}: {count} rows in the source, {target.rows.get(table, 0)} in the target"
                 for table, count in self.rows.items() if target.rows.get(table, 0) != count]
        for table, states in self.states.items():
            theirs = target.states.get(table, {})
            for state in sorted(states.keys() | theirs.keys()):
                if states.get(state, 0) != theirs.get(state, 0):
                    found.append(f"{table} {state}: {states.get(state, 0)} in the source, "
                                 f"{theirs.get(state, 0)} in the target")
        return found
