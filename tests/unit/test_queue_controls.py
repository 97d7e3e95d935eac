"""The queue controls' pure rules (domain/queues.py): the token bucket, what a change does to it,
the key limit applied in claim order, and why a QUEUED job waits."""

from __future__ import annotations

import pytest
from jobwire_server.domain.queues import (
    MAX_CONCURRENCY,
    KeyRoom,
    QueueChange,
    QueueSettings,
    WaitingReason,
    apply_change,
    available_tokens,
    next_token_time,
    start_room,
    take_tokens,
    waiting_reason,
)

T = 1_000.0


def bucket(rate: float = 10.0, burst: int = 5, tokens: float = 0.0, at: float = T) -> QueueSettings:
    return QueueSettings("q", rate=rate, burst=burst, tokens=tokens, tokens_time=at)


@pytest.mark.parametrize(("tokens", "elapsed", "expected"), [
    (0.0, 0.0, 0.0), (0.0, 0.25, 2.5), (0.0, 10.0, 5.0), (4.5, 0.1, 5.0), (1.0, -3.0, 1.0)])
def test_the_bucket_refills_at_the_rate_up_to_the_burst(tokens: float, elapsed: float, expected: float) -> None:
    assert available_tokens(bucket(tokens=tokens), T + elapsed) == pytest.approx(expected)


def test_starting_jobs_spends_whole_tokens_and_keeps_the_fraction() -> None:
    after = take_tokens(bucket(tokens=0.0), T + 0.37, 3)  # 3.7 accrued, 3 spent
    assert (after.tokens, after.tokens_time) == (pytest.approx(0.7), T + 0.37)
    assert next_token_time(after, T + 0.37) == pytest.approx(T + 0.4)
    assert start_room(bucket(tokens=0.0), T + 0.37, running=0) == 3


def test_a_full_token_is_due_now_and_no_rate_has_no_token_time() -> None:
    assert next_token_time(bucket(tokens=1.0), T) == T
    assert next_token_time(QueueSettings("q"), T) is None
    assert take_tokens(QueueSettings("q"), T, 10) == QueueSettings("q")


@pytest.mark.parametrize(("settings", "running", "room"), [
    (QueueSettings("q"), 0, MAX_CONCURRENCY),
    (QueueSettings("q", paused=True), 0, 0),
    (QueueSettings("q", concurrency=3), 1, 2),
    (QueueSettings("q", concurrency=3), 5, 0),
    (QueueSettings("q", concurrency=3, rate=1.0, burst=1, tokens=1.0, tokens_time=T), 0, 1),
])
def test_start_room_takes_the_smallest_limit(settings: QueueSettings, running: int, room: int) -> None:
    assert start_room(settings, T, running) == room


def test_a_new_rate_starts_full_and_a_changed_one_keeps_its_tokens() -> None:
    fresh = apply_change(QueueSettings("q"), QueueChange(rate=2.5), T)
    assert (fresh.burst, fresh.tokens, fresh.tokens_time) == (3, 3.0, T)  # burst: one second's worth
    spent = take_tokens(fresh, T, 3)
    lowered = apply_change(spent, QueueChange(burst=10), T + 0.4)  # an update is no way around the limit
    assert lowered.tokens == pytest.approx(1.0) and lowered.burst == 10
    cleared = apply_change(lowered, QueueChange(rate=0), T + 1)
    assert (cleared.rate, cleared.burst, cleared.tokens) == (0.0, 0, 0.0)
    kept = apply_change(lowered, QueueChange(paused=True), T + 1)
    assert (kept.rate, kept.burst, kept.paused) == (2.5, 10, True)


def test_the_key_limit_passes_over_a_full_key_and_counts_the_claim_itself() -> None:
    keys = KeyRoom(1, {"a": 1})
    assert keys.saturated() == ["a"]
    assert [keys.take(k) for k in ("a", "b", "b", "", "c")] == [False, True, False, True, True]
    assert keys.saturated() == ["a", "b", "c"]
    assert KeyRoom(0, {}).take("a"), "no key limit"


@pytest.mark.parametrize(("settings", "key", "running", "with_key", "reason"), [
    (None, "k", 9, 9, WaitingReason.NONE),
    (QueueSettings("q", paused=True, concurrency=1), "k", 1, 1, WaitingReason.QUEUE_PAUSED),
    (QueueSettings("q", concurrency=2, key_limit=1), "k", 2, 1, WaitingReason.QUEUE_CONCURRENCY),
    (QueueSettings("q", key_limit=1), "k", 1, 1, WaitingReason.CONCURRENCY_KEY),
    (QueueSettings("q", key_limit=1), "", 5, 0, WaitingReason.NONE),
    (QueueSettings("q", rate=1.0, burst=1, tokens=0.5, tokens_time=T), "", 0, 0, WaitingReason.RATE_LIMIT),
    (QueueSettings("q", rate=1.0, burst=1, tokens=0.5, tokens_time=T - 1), "", 0, 0, WaitingReason.NONE),
])
def test_waiting_reason_names_the_first_control_that_holds_the_job(
        settings: QueueSettings | None, key: str, running: int, with_key: int, reason: WaitingReason) -> None:
    assert waiting_reason(settings, T, key=key, running=running, running_with_key=with_key) is reason
