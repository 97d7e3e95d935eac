"""`evolve`, the fast `dataclasses.replace` of the domain records, and `fast_init`, their fast constructor."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import pytest
from jobwire_server.domain.models import (
    Event,
    Job,
    JobError,
    PendingEvent,
    Phase,
    Progress,
    Webhook,
    evolve,
    fast_init,
)
from jobwire_server.domain.states import EventType, JobState, PhaseState
from jobwire_server.domain.transitions import AttemptStart, JobChange
from jobwire_server.store.base import ApplyChange, Committed

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


FAST = [Progress, JobError, Webhook, Phase, Job, Event, PendingEvent, JobChange, AttemptStart, Committed, ApplyChange]


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_fast_init_sets_every_field_by_keyword_and_by_position(cls: type) -> None:
    values = {f.name: object() for f in fields(cls)}
    by_name, by_position = cls(**values), cls(*values.values())
    for f in fields(cls):
        assert getattr(by_name, f.name) is values[f.name]
        assert getattr(by_position, f.name) is values[f.name]


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_fast_init_keeps_the_dataclass_defaults(cls: type) -> None:
    required = {f.name: object() for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    record = cls(**required)
    for f in fields(cls):
        if f.name in required:
            assert getattr(record, f.name) is required[f.name]
        elif f.default is not MISSING:
            assert getattr(record, f.name) == f.default
        else:
            assert getattr(record, f.name) == f.default_factory()  # type: ignore[operator]
    if required:
        with pytest.raises(TypeError):
            cls()  # a required field missing
    with pytest.raises(TypeError):
        cls(**required, unknown=1)


def test_fast_init_refuses_what_it_does_not_handle() -> None:
    @dataclass(frozen=True, slots=True)
    class LateField:
        a: int
        b: int = field(init=False, default=0)

    with pytest.raises(TypeError):
        fast_init(LateField)
