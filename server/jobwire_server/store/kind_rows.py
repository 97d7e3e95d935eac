"""Rows of the `kinds` table <-> KindSpec, shared by both stores. Column order as in COLUMNS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jobwire_server.domain.kinds import KindSpec

COLUMNS = ("name", "phases", "queue", "max_attempts", "timeout", "retry_base_delay", "retry_max_delay",
           "declare_time")
SELECT = ", ".join(COLUMNS)


def to_row(spec: KindSpec, now: float) -> tuple[Any, ...]:
    return (spec.name, json.dumps(list(spec.phases)), spec.queue, spec.max_attempts, spec.timeout,
            spec.retry_base_delay, spec.retry_max_delay, now)


def from_row(row: Sequence[Any]) -> KindSpec:
    return KindSpec(name=row[0], phases=tuple(json.loads(row[1])), queue=row[2], max_attempts=int(row[3]),
                    timeout=float(row[4]), retry_base_delay=float(row[5]), retry_max_delay=float(row[6]))
