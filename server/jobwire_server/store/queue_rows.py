"""Queue settings rows <-> records, shared by both stores: one row per queue that was ever paused or
given a setting (a queue with no row has every default: running, unlimited)."""

from __future__ import annotations

from typing import Any

from jobwire_server.domain.queues import QueueSettings
from jobwire_server.store.rows import Row

COLUMNS = ("name", "paused", "concurrency", "rate", "burst", "key_limit", "default_priority",
           "default_max_attempts", "tokens", "tokens_time", "create_time", "update_time")
SELECT = ", ".join(COLUMNS)
#: The rows a claim must look at: paused queues, and queues with a limit.
CONTROLS = "(paused OR concurrency > 0 OR rate > 0 OR key_limit > 0)"


def from_row(row: Row) -> QueueSettings:
    (name, paused, concurrency, rate, burst, key_limit, priority, max_attempts, tokens, tokens_time, create_time,
     update_time) = row
    return QueueSettings(name=name, paused=bool(paused), concurrency=concurrency, rate=float(rate), burst=burst,
                         key_limit=key_limit, default_priority=priority, default_max_attempts=max_attempts,
                         tokens=float(tokens), tokens_time=float(tokens_time), create_time=create_time,
                         update_time=update_time)


def params(s: QueueSettings) -> tuple[Any, ...]:
    return (s.name, s.paused, s.concurrency, s.rate, s.burst, s.key_limit, s.default_priority,
            s.default_max_attempts, s.tokens, s.tokens_time, s.create_time, s.update_time)
