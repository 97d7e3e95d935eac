"""Injectable time: the engine asks a clock, so tests can move time instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to; `advance` wakes whoever waits on `changed`."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self.changed = asyncio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self.changed.set()
        self.changed = asyncio.Event()
