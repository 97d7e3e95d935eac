"""RetryPolicy: exponential backoff with half jitter (server/jobwire_server/domain/retry.py)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jobwire_server.domain.retry import RetryPolicy


class FixedDraw(random.Random):
    """An rng whose draw is always `value`, to see the ends of the jitter range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def ceiling(policy: RetryPolicy, attempt: int) -> float:
    return min(policy.max_delay, policy.base_delay * 2.0 ** (attempt - 1))


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.floats(min_value=0.0, max_value=1_000.0, allow_nan=False))
    extra = draw(st.floats(min_value=0.0, max_value=100_000.0, allow_nan=False))
    return RetryPolicy(base_delay=base, max_delay=base + extra)


@given(policy=policies(), attempt=st.integers(min_value=1, max_value=1_000), seed=st.integers(0, 2**32 - 1))
def test_delay_is_within_half_ceiling_and_ceiling(policy: RetryPolicy, attempt: int, seed: int) -> None:
    top = ceiling(policy, attempt)
    delay = policy.delay(attempt, random.Random(seed))
    assert top / 2 <= delay <= top
    assert delay <= policy.max_delay


@given(policy=policies(), attempt=st.integers(min_value=1, max_value=1_000), seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_delay(policy: RetryPolicy, attempt: int, seed: int) -> None:
    assert policy.delay(attempt, random.Random(seed)) == policy.delay(attempt, random.Random(seed))


def test_jitter_range_ends() -> None:
    policy = RetryPolicy(base_delay=4.0, max_delay=1_000.0)
    assert policy.delay(1, FixedDraw(0.0)) == 2.0
    assert policy.delay(1, FixedDraw(0.5)) == 3.0
    assert policy.delay(1, FixedDraw(1.0)) == 4.0
    assert policy.delay(3, FixedDraw(0.0)) == 8.0
    assert policy.delay(3, FixedDraw(1.0)) == 16.0


def test_delay_doubles_per_attempt_until_the_cap() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0)
    lows = [policy.delay(n, FixedDraw(0.0)) for n in range(1, 10)]
    assert lows == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 50.0, 50.0]
    highs = [policy.delay(n, FixedDraw(1.0)) for n in range(1, 10)]
    assert highs == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0, 100.0]


def test_delay_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay=10.0, max_delay=30.0)
    for attempt in range(3, 60):
        assert 15.0 <= policy.delay(attempt, random.Random(attempt)) <= 30.0
    assert policy.delay(59, FixedDraw(1.0)) == 30.0


def test_delay_for_a_very_high_attempt_is_capped() -> None:
    """attempt is unbounded (max_attempts has no upper limit and RetryJob keeps the number rising),
    so a job can fail at attempt 1025+; the delay must still be the cap, not an OverflowError."""
    policy = RetryPolicy(base_delay=1.0, max_delay=300.0)
    assert policy.delay(1_025, FixedDraw(1.0)) == 300.0
    assert 150.0 <= policy.delay(5_000, random.Random(0)) <= 300.0


def test_attempt_zero_or_below_uses_the_base_delay() -> None:
    policy = RetryPolicy(base_delay=8.0, max_delay=100.0)
    assert policy.delay(0, FixedDraw(1.0)) == 8.0
    assert policy.delay(-3, FixedDraw(1.0)) == 8.0


def test_zero_base_delay_means_immediate_retry() -> None:
    policy = RetryPolicy(base_delay=0.0, max_delay=0.0)
    assert [policy.delay(n, random.Random(n)) for n in range(1, 20)] == [0.0] * 19


def test_default_policy_and_default_rng() -> None:
    policy = RetryPolicy()
    assert (policy.base_delay, policy.max_delay) == (1.0, 300.0)
    for attempt in range(1, 12):
        top = ceiling(policy, attempt)
        assert top / 2 <= policy.delay(attempt) <= top


def test_jitter_spreads_delays() -> None:
    policy = RetryPolicy(base_delay=10.0, max_delay=10.0)
    rng = random.Random(7)
    delays = {policy.delay(1, rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= 5.0 and max(delays) <= 10.0


@pytest.mark.parametrize(
    ("base", "maximum"),
    [(-1.0, 10.0), (-0.001, 0.0), (10.0, 5.0), (1.0, 0.0)],
)
def test_invalid_policies_raise(base: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="base_delay"):
        RetryPolicy(base_delay=base, max_delay=maximum)


@pytest.mark.parametrize(
    ("base", "maximum"),
    [(math.nan, 10.0), (1.0, math.nan), (math.nan, math.nan)],
)
def test_nan_policies_raise(base: float, maximum: float) -> None:
    """NaN fails every comparison, so `base < 0 or max < base` lets it through; the docstring's
    rule 0 <= base_delay <= max_delay does not hold for NaN."""
    with pytest.raises(ValueError, match="base_delay"):
        RetryPolicy(base_delay=base, max_delay=maximum)


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.base_delay = 5.0  # type: ignore[misc]
