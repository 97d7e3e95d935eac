"""Row ↔ domain conversion (store/rows.py), shared by both stores: every column lands in the field
of its name (the conversion builds records positionally, for speed)."""

from __future__ import annotations

import json

from jobwire_server.domain.models import NO_PROGRESS, JobError, Phase, Progress, Webhook
from jobwire_server.domain.states import EventType, JobState, PhaseState
from jobwire_server.store import rows

ERROR = JobError("boom", "ValueError", True, "run", 2, False, 7.0)

#: A distinct value in every column that is copied as it is.
PLAIN = {
    "id": "job-1", "queue": "q", "kind": "k", "payload": b"p", "priority": 7, "attempt": 3,
    "uncounted_attempts": 1, "max_attempts": 9, "timeout": 11.0, "cancel_reason": "why", "trace_parent": "tp",
    "seq": 13, "create_time": 101.0, "update_time": 102.0, "run_at": 103.0, "start_time": 104.0,
    "finish_time": 105.0,
}
FIELD = {"seq": "last_sequence"}


def job_row(**columns: object) -> tuple[object, ...]:
    values = {**PLAIN, "state": "RETRYING", "progress_pct": 50.0, "progress_msg": "half",
              "error": rows.error_to_json(ERROR), "error_history": rows.history_to_json((ERROR,)),
              "dedupe_key": "d", "labels": json.dumps({"env": "prod"}),
              "webhook": rows.webhook_to_json(Webhook("http://x", (EventType.SUCCEEDED,))),
              "cancel_requested": 1, "concurrency_key": "ck", **columns}
    return tuple(values[c] for c in rows.JOB_COLUMNS)


def test_every_job_column_lands_in_its_field() -> None:
    phase = Phase("run")
    job = rows.job_from_row(job_row(), [phase])
    for column, value in PLAIN.items():
        assert getattr(job, FIELD.get(column, column)) == value, column
    assert job.state is JobState.RETRYING
    assert job.progress == Progress(50.0, "half")
    assert (job.error, job.error_history) == (ERROR, (ERROR,))
    assert (job.dedupe_key, dict(job.labels), job.concurrency_key) == ("d", {"env": "prod"}, "ck")
    assert job.webhook == Webhook("http://x", (EventType.SUCCEEDED,))
    assert job.cancel_requested is True
    assert job.phases == (phase,)


def test_empty_columns_give_the_defaults() -> None:
    job = rows.job_from_row(job_row(progress_pct=0.0, progress_msg="", error=None, error_history="[]",
                                    dedupe_key=None, labels="{}", webhook=None, cancel_requested=0,
                                    concurrency_key=None), ())
    assert (job.progress, job.error, job.error_history) == (NO_PROGRESS, None, ())
    assert (job.dedupe_key, dict(job.labels), job.webhook, job.cancel_requested, job.concurrency_key) == (
        "", {}, None, False, "")


def test_every_phase_column_lands_in_its_field() -> None:
    phase = rows.phase_from_row(("job-1", 0, "run", "FAILED", 25.0, "msg", b"r", rows.error_to_json(ERROR), 1.0, 2.0))
    assert phase == Phase("run", PhaseState.FAILED, Progress(25.0, "msg"), b"r", ERROR, 1.0, 2.0)
    fresh = rows.phase_from_row(("job-1", 1, "next", "PENDING", 0.0, "", b"", None, None, None))
    assert fresh == Phase("next")
