"""Read-side queries: what ListJobs (and the bulk actions) ask the store for (no I/O, no proto)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from jobwire_server.domain.models import Job
from jobwire_server.domain.states import TERMINAL_STATES, JobState

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

#: States of a job that has a finish time: the terminal ones, and STALE (which keeps it).
FINISHED_STATES = frozenset({*TERMINAL_STATES, JobState.STALE})

_NO_LABELS: Mapping[str, str] = MappingProxyType({})
_NO_VALUES: Mapping[str, frozenset[str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class JobQuery:
    """One page of ListJobs: jobs matching every filter, newest first (by id, a UUIDv7).

    A filter that is None (or empty, for the collections) matches everything.
    `labels` are exact key/value pairs, `label_keys` keys that must be present whatever their
    value, `label_in` keys whose value must be one of a set. Time bounds are epoch seconds; the
    `_after` ones are inclusive, the `_before` ones exclusive; a job that has not finished has no
    finish time and matches no `finished_` bound.
    `after_id` is the cursor: only jobs whose id sorts *before* it (``id < after_id``) are listed.
    """

    queue: str | None = None
    kind: str | None = None
    states: frozenset[JobState] = frozenset()
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    created_after: float | None = None
    created_before: float | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    after_id: str | None = None
    label_keys: frozenset[str] = frozenset()
    label_in: Mapping[str, frozenset[str]] = field(default_factory=lambda: _NO_VALUES)
    finished_after: float | None = None
    finished_before: float | None = None

    @property
    def has_criteria(self) -> bool:
        """Whether any filter is given (a query without one matches every job)."""
        return bool(self.queue or self.kind or self.states or self.labels or self.label_keys or self.label_in
                    or self.created_after is not None or self.created_before is not None
                    or self.finished_after is not None or self.finished_before is not None)

    @property
    def finish_states(self) -> frozenset[JobState]:
        """The states a job matching the finish-time bounds can be in (every state without them)."""
        if self.finished_after is None and self.finished_before is None:
            return self.states
        return (self.states & FINISHED_STATES) if self.states else FINISHED_STATES

    def matches(self, job: Job) -> bool:
        """Whether `job` (as it is now) meets every filter; the cursor and page size are not filters."""
        labels = job.labels
        return ((self.queue is None or job.queue == self.queue)
                and (self.kind is None or job.kind == self.kind)
                and (not self.states or job.state in self.states)
                and all(labels.get(key) == value for key, value in self.labels.items())
                and all(key in labels for key in self.label_keys)
                and all(labels.get(key) in values for key, values in self.label_in.items())
                and _within(job.create_time, self.created_after, self.created_before)
                and ((self.finished_after is None and self.finished_before is None)
                     or (job.finish_time is not None
                     and _within(job.finish_time, self.finished_after, self.finished_before))))


def _within(value: float, after: float | None, before: float | None) -> bool:
    return (after is None or value >= after) and (before is None or value < before)


def filters_digest(query: JobQuery) -> str:
    """A sha256 hex digest of the query's normalized filters (not its page size or cursor), so a
    page token can be tied to the filters that produced it."""
    normalized = {
        "q": query.queue,
        "k": query.kind,
        "s": sorted(state.value for state in query.states),
        "l": sorted(query.labels.items()),
        "ca": query.created_after,
        "cb": query.created_before,
        "lk": sorted(query.label_keys),
        "li": sorted((key, sorted(values)) for key, values in query.label_in.items()),
        "fa": query.finished_after,
        "fb": query.finished_before,
    }
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
