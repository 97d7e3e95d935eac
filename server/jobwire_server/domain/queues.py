"""Queue controls: what a queue's stored settings allow a claim to start, and why a QUEUED job
waits. Pure code: the stores read the facts (the settings row, the running counts) inside the
claim's transaction and write back what `take_tokens` returns, so a limit holds across every
process sharing the database.

The rate limit is a token bucket: `rate` tokens a second accrue up to `burst`, each job started
takes one. The bucket is kept as (tokens, tokens_time) and refilled lazily from the clock the
claim passes in, so no timer writes it; the dispatcher's timer only wakes the next claim when
the next token is due (`next_token_time`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Final

from jobwire_server.domain.models import evolve

#: Upper bounds of the settings (a larger value is refused): far above what one database sustains,
#: low enough that a typo (an extra zero or three) is caught.
MAX_CONCURRENCY: Final = 100_000
MAX_RATE: Final = 10_000.0
MAX_BURST: Final = 100_000
MAX_KEY_LIMIT: Final = 10_000
MAX_CONCURRENCY_KEY: Final = 256


class WaitingReason(Enum):
    """Why a QUEUED job has not started; NONE when only a free worker slot is missing."""

    NONE = "NONE"
    QUEUE_PAUSED = "QUEUE_PAUSED"
    RATE_LIMIT = "RATE_LIMIT"
    CONCURRENCY_KEY = "CONCURRENCY_KEY"
    QUEUE_CONCURRENCY = "QUEUE_CONCURRENCY"


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's stored settings; zero means "no limit" (or "no default") for each number."""

    name: str
    paused: bool = False
    #: Jobs of the queue running at once, on every process sharing the database.
    concurrency: int = 0
    #: Jobs started per second (token bucket); 0 means unlimited.
    rate: float = 0.0
    #: Tokens the bucket holds at most: how many jobs may start at once after an idle spell.
    burst: int = 0
    #: Jobs with the same concurrency key running at once.
    key_limit: int = 0
    #: Applied at enqueue when the request leaves priority (or max_attempts) unset.
    default_priority: int = 0
    default_max_attempts: int = 0
    #: The bucket: `tokens` as of `tokens_time` (epoch seconds).
    tokens: float = 0.0
    tokens_time: float = 0.0
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def controls_claims(self) -> bool:
        """Whether a claim must look at this queue on its own (any limit, or paused)."""
        return self.paused or self.concurrency > 0 or self.rate > 0 or self.key_limit > 0


@dataclass(frozen=True, slots=True)
class QueueChange:
    """An UpdateQueue request: None leaves a setting as it is; 0 clears a limit or a default."""

    paused: bool | None = None
    concurrency: int | None = None
    rate: float | None = None
    burst: int | None = None
    key_limit: int | None = None
    default_priority: int | None = None
    default_max_attempts: int | None = None


def apply_change(current: QueueSettings, change: QueueChange, now: float) -> QueueSettings:
    """The settings after `change`. A bucket whose rate or burst changes keeps the tokens it had
    (capped at the new burst), so an update is not a way around the limit; a new rate starts
    with a full bucket. A burst left at 0 with a rate means max(1, ceil(rate)): one second's worth."""
    updates = {name: value for name, value in (
        ("paused", change.paused), ("concurrency", change.concurrency), ("rate", change.rate),
        ("burst", change.burst), ("key_limit", change.key_limit), ("default_priority", change.default_priority),
        ("default_max_attempts", change.default_max_attempts)) if value is not None}
    after: QueueSettings = evolve(current, update_time=now, **updates)
    if after.rate > 0 and after.burst == 0:
        after = evolve(after, burst=max(1, math.ceil(after.rate)))
    if after.rate == 0:
        return evolve(after, burst=0, tokens=0.0, tokens_time=0.0)
    tokens = available_tokens(current, now) if current.rate > 0 else float(after.burst)
    return evolve(after, tokens=min(tokens, float(after.burst)), tokens_time=now)


def available_tokens(settings: QueueSettings, now: float) -> float:
    """Tokens in the bucket at `now` (unbounded without a rate)."""
    if settings.rate <= 0:
        return math.inf
    elapsed = max(0.0, now - settings.tokens_time)
    return min(float(settings.burst), settings.tokens + elapsed * settings.rate)


def start_room(settings: QueueSettings, now: float, running: int) -> int:
    """How many jobs of the queue a claim at `now` may start, by its stored settings (the key
    limit is applied job by job: `KeyRoom`); `running` counts its RUNNING jobs on every process."""
    if settings.paused:
        return 0
    room = math.inf
    if settings.concurrency > 0:
        room = max(0, settings.concurrency - running)
    if settings.rate > 0:
        # A hair of tolerance: 0.99999999 tokens from float rounding is one token.
        room = min(room, math.floor(available_tokens(settings, now) + 1e-9))
    return int(room) if room != math.inf else MAX_CONCURRENCY


def take_tokens(settings: QueueSettings, now: float, started: int) -> QueueSettings:
    """The bucket after `started` jobs started at `now` (unchanged without a rate)."""
    if settings.rate <= 0:
        return settings
    return evolve(settings, tokens=max(0.0, available_tokens(settings, now) - started), tokens_time=now)


def next_token_time(settings: QueueSettings, now: float) -> float | None:
    """When the bucket next holds a whole token (now if it does); None without a rate."""
    if settings.rate <= 0:
        return None
    missing = 1.0 - available_tokens(settings, now)
    return now if missing <= 1e-9 else now + missing / settings.rate


class KeyRoom:
    """The key limit, applied to a queue's candidates in claim order: a job whose key already has
    `limit` jobs running (or taken earlier in this claim) is passed over, so other keys' jobs
    behind it are not blocked."""

    def __init__(self, limit: int, running: dict[str, int]) -> None:
        self.limit = limit
        self.counts = dict(running)

    def saturated(self) -> list[str]:
        return sorted(key for key, count in self.counts.items() if count >= self.limit)

    def take(self, key: str | None) -> bool:
        """Whether a job with `key` may start (counting it when it may)."""
        if not key or self.limit <= 0:
            return True
        count = self.counts.get(key, 0)
        if count >= self.limit:
            return False
        self.counts[key] = count + 1
        return True


def waiting_reason(settings: QueueSettings | None, now: float, *, key: str, running: int,
                   running_with_key: int) -> WaitingReason:
    """Why a QUEUED job of this queue (with concurrency `key`) waits, from the queue's settings
    and its RUNNING jobs: the first control that holds it back, in the order a claim applies them."""
    if settings is None:
        return WaitingReason.NONE
    if settings.paused:
        return WaitingReason.QUEUE_PAUSED
    if settings.concurrency > 0 and running >= settings.concurrency:
        return WaitingReason.QUEUE_CONCURRENCY
    if key and settings.key_limit > 0 and running_with_key >= settings.key_limit:
        return WaitingReason.CONCURRENCY_KEY
    if settings.rate > 0 and available_tokens(settings, now) < 1.0 - 1e-9:
        return WaitingReason.RATE_LIMIT
    return WaitingReason.NONE
