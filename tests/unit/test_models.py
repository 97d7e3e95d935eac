"""`evolve`, the fast `dataclasses.replace` of the domain records."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest
from jobwire_server.domain.models import Event, Job, JobError, Phase, Progress, Webhook, evolve
from jobwire_server.domain.states import EventType, JobState, PhaseState

ERROR = JobError("boom", "ValueError", True, "run", 1, False, 2.0)
PHASE = Phase("run", PhaseState.FAILED, Progress(50.0, "half"), b"r", ERROR, 1.0, 2.0)
JOB = Job(id="j1", queue="q", kind="k", payload=b"p", priority=7, state=JobState.RETRYING, max_attempts=3,
          phases=(PHASE,), create_time=1.0, update_time=2.0, run_at=3.0, attempt=1, error=ERROR,
          error_history=(ERROR,), webhook=Webhook("http://x", (EventType.SUCCEEDED,)), last_sequence=4)
EVENT = Event("j1", 4, EventType.RETRY_SCHEDULED, 2.0, "q", "k", "run", "detail", JOB)


@pytest.mark.parametrize("record", [JOB, PHASE, EVENT, ERROR], ids=lambda r: type(r).__name__)
def test_evolve_matches_replace_for_every_field(record: Any) -> None:
    for f in fields(record):
        value = object()
        changed = evolve(record, **{f.name: value})
        assert changed == replace(record, **{f.name: value})
        assert getattr(changed, f.name) is value
    assert evolve(record) == record and evolve(record) is not record


def test_evolve_leaves_the_original_alone_and_refuses_unknown_fields() -> None:
    changed = evolve(JOB, state=JobState.QUEUED, attempt=2)
    assert (changed.state, changed.attempt, changed.phases) == (JobState.QUEUED, 2, JOB.phases)
    assert (JOB.state, JOB.attempt) == (JobState.RETRYING, 1)
    with pytest.raises(TypeError, match="no fields"):
        evolve(JOB, colour="red")
