"""Read-side queries: what ListJobs asks the store for (no I/O, no proto)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from jobwire_server.domain.states import JobState

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class JobQuery:
    """One page of ListJobs: jobs matching every filter, newest first (by id, a UUIDv7).

    A filter that is None (or empty, for `states` and `labels`) matches everything.
    `created_after` is inclusive, `created_before` exclusive (epoch seconds).
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
    }
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
