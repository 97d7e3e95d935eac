"""Retry policy of a kind: exponential backoff with half jitter, bounded."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before attempt n+1 after attempt n failed: uniform in [base·2^(n-1)/2, base·2^(n-1)],
    capped at `max_delay`. Half jitter keeps a floor so retries never bunch at zero."""

    base_delay: float = 1.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_delay) and math.isfinite(self.max_delay)
                and 0 <= self.base_delay <= self.max_delay):
            raise ValueError("retry policy needs 0 <= base_delay <= max_delay")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        # The exponent is capped so a very high attempt number cannot overflow a float.
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(max(attempt - 1, 0), 1023))
        draw: float = (rng or random).random()
        return ceiling / 2 + draw * ceiling / 2
