"""Immutable job, phase and event records. A change makes a new record (`dataclasses.replace`),
so an event can hold the job "as it was after the event" without copying."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

from jobwire_server.domain.states import EventType, JobState, PhaseState

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 5
MIN_PRIORITY, MAX_PRIORITY = 1, 10

_EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})

_C = TypeVar("_C", bound=type)


def fast_init(cls: _C) -> _C:
    """Give a frozen, slotted dataclass a faster `__init__` of the same signature. The one
    `dataclass` generates sets each field with `object.__setattr__` looked up by name (a frozen
    class refuses plain assignment); this one calls each slot descriptor's setter directly, about
    half the cost for an `Event`. Records built for every job's every change use it."""
    params: list[str] = []
    lines: list[str] = []
    scope: dict[str, Any] = {"MISSING": MISSING}
    for f in fields(cls):
        if not f.init or f.kw_only or hasattr(cls, "__post_init__"):
            raise TypeError(f"fast_init does not handle {cls.__name__}.{f.name}")
        scope[f"set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is not MISSING:
            scope[f"default_{f.name}"] = f.default
            params.append(f"{f.name}=default_{f.name}")
        elif f.default_factory is not MISSING:
            scope[f"factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=MISSING")
            lines.append(f"    if {f.name} is MISSING: {f.name} = factory_{f.name}()")
        else:
            params.append(f.name)
    lines += [f"    set_{f.name}(self, {f.name})" for f in fields(cls)]
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


@fast_init
@dataclass(frozen=True, slots=True)
class Progress:
    percent: float = 0.0
    message: str = ""


NO_PROGRESS = Progress()


@fast_init
@dataclass(frozen=True, slots=True)
class JobError:
    """One failure of one attempt; the job keeps every one in `error_history`."""

    message: str
    type: str
    retryable: bool
    phase: str
    attempt: int
    interrupted: bool
    time: float


@fast_init
@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    events: tuple[EventType, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    state: PhaseState = PhaseState.PENDING
    progress: Progress = NO_PROGRESS
    result: bytes = b""
    error: JobError | None = None
    start_time: float | None = None
    finish_time: float | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Job:
    id: str
    queue: str
    kind: str
    payload: bytes
    priority: int
    state: JobState
    max_attempts: int
    phases: tuple[Phase, ...]
    create_time: float
    update_time: float
    run_at: float
    attempt: int = 0
    #: Attempts that do not count against `max_attempts` (interrupted by shutdown, or before a RetryJob).
    uncounted_attempts: int = 0
    timeout: float = 0.0
    progress: Progress = NO_PROGRESS
    error: JobError | None = None
    error_history: tuple[JobError, ...] = ()
    dedupe_key: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY_LABELS)
    webhook: Webhook | None = None
    cancel_requested: bool = False
    cancel_reason: str = ""
    start_time: float | None = None
    finish_time: float | None = None
    last_sequence: int = 0
    trace_parent: str = ""
    #: At most the queue's `key_limit` jobs with the same key run at once; empty means no key.
    concurrency_key: str = ""

    @property
    def result(self) -> bytes:
        """The last phase's result once the job has succeeded."""
        if self.state is JobState.SUCCEEDED and self.phases:
            return self.phases[-1].result
        return b""

    @property
    def next_phase(self) -> int:
        """Index of the first phase that has not succeeded (len(phases) when all have)."""
        for index, phase in enumerate(self.phases):
            if phase.state is not PhaseState.SUCCEEDED:
                return index
        return len(self.phases)

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - (self.attempt - self.uncounted_attempts)

    @property
    def results(self) -> dict[str, bytes]:
        return {p.name: p.result for p in self.phases if p.state is PhaseState.SUCCEEDED}


@fast_init
@dataclass(frozen=True, slots=True)
class Event:
    """A stored, numbered change of one job. `job` is the job after it (None for DELETED)."""

    job_id: str
    sequence: int
    type: EventType
    time: float
    queue: str
    kind: str
    phase: str = ""
    detail: str = ""
    job: Job | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event a change will emit; the store numbers it when the change commits."""

    type: EventType
    phase: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated enqueue request, with the phases its kind defines."""

    queue: str
    kind: str
    payload: bytes
    priority: int
    run_at: float
    max_attempts: int
    timeout: float
    phase_names: tuple[str, ...]
    dedupe_key: str = ""
    request_id: str = ""
    #: A digest of the request, so a reused request_id with a different request is detected.
    fingerprint: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY_LABELS)
    webhook: Webhook | None = None
    trace_parent: str = ""
    concurrency_key: str = ""
    #: The request left priority (max_attempts) unset: the queue's stored default, if it has one,
    #: replaces the value here (the server's or the kind's default) when the job is created.
    priority_unset: bool = False
    max_attempts_unset: bool = False


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    counts: Mapping[JobState, int]
    oldest_queued_age: float


_R = TypeVar("_R")
_EVOLVERS: dict[type, Any] = {}


def evolve(record: _R, **changes: Any) -> _R:
    """`dataclasses.replace` for our frozen records, without re-running `__init__`: several times
    faster, which matters on the claim/complete hot path where every job changes a few times."""
    cls = type(record)
    evolver = _EVOLVERS.get(cls) or _make_evolver(cls)
    result: _R = evolver(record, changes)
    return result


def _make_evolver(cls: type) -> Any:
    """Generate `copy(record, changes)` for `cls`: one straight-line function per record type. It
    copies every field through the slot descriptors' setters (no name lookup per field, unlike
    `object.__setattr__`), then overwrites the changed ones."""
    names = tuple(f.name for f in fields(cls))
    setters = {name: getattr(cls, name).__set__ for name in names}
    lines = ["def evolve(r, c):",
             "    if not c.keys() <= NAMES:",
             f"        raise TypeError(f'{cls.__name__} has no fields {{sorted(c.keys() - NAMES)}}')",
             "    n = new(cls)"]
    lines += [f"    set_{name}(n, r.{name})" for name in names]
    lines += ["    for name, value in c.items():",
              "        SETTERS[name](n, value)",
              "    return n"]
    scope: dict[str, Any] = {"NAMES": frozenset(names), "new": object.__new__, "cls": cls, "SETTERS": setters}
    scope.update({f"set_{name}": setter for name, setter in setters.items()})
    exec("\n".join(lines), scope)
    _EVOLVERS[cls] = scope["evolve"]
    return scope["evolve"]
