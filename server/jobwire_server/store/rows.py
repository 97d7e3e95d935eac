"""Row ↔ domain conversion, shared by the stores (SQLite and PostgreSQL return the same column shapes)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from types import MappingProxyType
from typing import Any, Protocol

from jobwire_server.domain.models import NO_PROGRESS, Event, Job, JobError, Phase, Progress, Webhook
from jobwire_server.domain.states import EventType, JobState, PhaseState

JOB_COLUMNS = (
    "id", "queue", "kind", "payload", "priority", "state", "attempt", "uncounted_attempts", "max_attempts",
    "timeout", "progress_pct", "progress_msg", "error", "error_history", "dedupe_key", "labels", "webhook",
    "cancel_requested", "cancel_reason", "trace_parent", "seq", "create_time", "update_time", "run_at",
    "start_time", "finish_time", "concurrency_key",
)
JOB_SELECT = ", ".join(JOB_COLUMNS)
JOB_RETURNING = ", ".join(f"jobs.{c}" for c in JOB_COLUMNS)
PHASE_COLUMNS = "job_id, idx, name, state, progress_pct, progress_msg, result, error, start_time, finish_time"

class Row(Protocol):
    """A fetched row: a tuple from sqlite3, an `asyncpg.Record`."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


_STATES = {s.value: s for s in JobState}
#: Each member's value: `.value` of an enum is a property, several times slower than a dict lookup
#: on the paths that write every job's rows (and sqlite3 binds a str subclass slowly).
STATE_VALUES: Mapping[JobState, str] = {s: s.value for s in JobState}
PHASE_STATE_VALUES: Mapping[PhaseState, str] = {s: s.value for s in PhaseState}
EVENT_TYPE_VALUES: Mapping[EventType, str] = {t: t.value for t in EventType}
_NO_LABELS: Mapping[str, str] = MappingProxyType({})
_PHASE_STATES = {s.value: s for s in PhaseState}
_EVENT_TYPES = {t.value: t for t in EventType}


def error_to_json(error: JobError | None) -> str | None:
    return None if error is None else json.dumps(asdict(error), separators=(",", ":"))


def _error_from_dict(data: Mapping[str, Any]) -> JobError:
    return JobError(**data)


def error_from_json(text: str | None) -> JobError | None:
    return None if text is None else _error_from_dict(json.loads(text))


def history_to_json(history: Sequence[JobError]) -> str:
    if not history:
        return "[]"  # most jobs never fail: skip the encoder on the hot path
    return json.dumps([asdict(e) for e in history], separators=(",", ":"))


def webhook_to_json(webhook: Webhook | None) -> str | None:
    if webhook is None:
        return None
    return json.dumps({"url": webhook.url, "events": [e.value for e in webhook.events]})


def _webhook_from_json(text: str | None) -> Webhook | None:
    if text is None:
        return None
    data = json.loads(text)
    return Webhook(data["url"], tuple(_EVENT_TYPES[e] for e in data["events"]))


def phase_from_row(row: Row) -> Phase:
    _, _, name, state, pct, msg, result, error, start, finish = row
    # Positional, in the field order of Phase (a keyword call costs more, for every phase read).
    return Phase(name, _PHASE_STATES[state], Progress(pct, msg) if pct or msg else NO_PROGRESS, result,
                 None if error is None else error_from_json(error), start, finish)


def phase_params(job_id: str, index: int, phase: Phase) -> tuple[Any, ...]:
    """Parameters for `UPDATE phases SET state, pct, msg, result, error, start, finish WHERE job, idx`."""
    return (PHASE_STATE_VALUES[phase.state], phase.progress.percent, phase.progress.message, phase.result,
            None if phase.error is None else error_to_json(phase.error), phase.start_time, phase.finish_time,
            job_id, index)


def job_from_row(row: Row, phases: Iterable[Phase]) -> Job:
    (id_, queue, kind, payload, priority, state, attempt, uncounted, max_attempts, timeout, pct, msg, error,
     history, dedupe_key, labels, webhook, cancel_requested, cancel_reason, trace_parent, seq, create_time,
     update_time, run_at, start_time, finish_time, concurrency_key) = row
    # Positional, in the field order of Job (a keyword call of its 27 fields costs about half again
    # as much, for every job read or claimed); tests/unit/test_rows.py checks every column's field.
    return Job(
        id_, queue, kind, payload, priority, _STATES[state], max_attempts, tuple(phases), create_time, update_time,
        run_at, attempt, uncounted, timeout, Progress(pct, msg) if pct or msg else NO_PROGRESS,
        None if error is None else error_from_json(error),
        () if history == "[]" else tuple(_error_from_dict(e) for e in json.loads(history)),
        dedupe_key or "", _NO_LABELS if labels == "{}" else MappingProxyType(json.loads(labels)),
        None if webhook is None else _webhook_from_json(webhook), bool(cancel_requested), cancel_reason,
        start_time, finish_time, seq, trace_parent, concurrency_key or "",
    )


def event_from_row(row: Row, queue: str, kind: str, job: Job | None) -> Event:
    job_id, seq, type_, time, phase, detail = row
    return Event(job_id=job_id, sequence=seq, type=_EVENT_TYPES[type_], time=time, queue=queue, kind=kind,
                 phase=phase, detail=detail, job=job)
