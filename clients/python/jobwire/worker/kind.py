"""The Python handler API: a `Kind` is an ordered list of named phases, each an async (or plain)
function of a `JobContext`. The same module runs inside the server (`jobwire serve --handlers`) or
on a remote worker (`jobwire worker --handlers`).

    thumbnail = Kind("thumbnail", queue="media", max_attempts=5)

    @thumbnail.phase("fetch")
    async def fetch(ctx: JobContext) -> bytes | None: ...
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobwire.worker.errors import PermanentError
from jobwire.worker.retry import RetryPolicy

#: The queue of a kind that names none (the server's default queue).
DEFAULT_QUEUE = "default"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

ProgressReporter = Callable[[float, str], Awaitable[None]]


class MalformedPayload(PermanentError):
    """The payload cannot be decoded as the handler needs; no retry can fix it."""


class JobContext:
    """What a phase handler sees of its job."""

    __slots__ = ("_loop", "_report", "attempt", "job_id", "kind", "labels", "payload", "phase", "queue", "results")

    def __init__(self, *, job_id: str, kind: str, queue: str, attempt: int, payload: bytes,
                 labels: Mapping[str, str], results: Mapping[str, bytes], phase: str,
                 report: ProgressReporter, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.job_id = job_id
        self.kind = kind
        self.queue = queue
        self.attempt = attempt
        self.payload = payload
        self.labels = labels
        #: name → result of each phase that already succeeded (earlier phases, or an earlier attempt).
        self.results = results
        self.phase = phase
        self._report = report
        self._loop = loop

    def json(self) -> Any:
        """The payload decoded as JSON (an empty payload is None); undecodable → MalformedPayload."""
        if not self.payload:
            return None
        try:
            return json.loads(self.payload)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting or numbers
            raise MalformedPayload(f"payload is not valid JSON: {str(exc)[:200]}") from None

    async def progress(self, percent: float, message: str = "") -> None:
        """Report progress of the current phase, 0–100; stored and sent to watchers."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within 0–100, got {percent}")
        await self._report(float(percent), message)

    def progress_sync(self, percent: float, message: str = "", timeout: float = 30.0) -> None:
        """`progress` for synchronous handlers, which run in a worker thread."""
        if self._loop is None:
            raise RuntimeError("this context has no event loop to report progress to")
        asyncio.run_coroutine_threadsafe(self.progress(percent, message), self._loop).result(timeout)


PhaseFunction = Callable[[JobContext], Awaitable[bytes | str | None]] | Callable[[JobContext], bytes | str | None]


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    function: PhaseFunction


@dataclass
class Kind:
    """A kind of job: its phases, its queue and its defaults."""

    name: str
    queue: str = DEFAULT_QUEUE
    max_attempts: int = 3
    timeout: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    phases: list[PhaseSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        for label, value in (("kind", self.name), ("queue", self.queue)):
            if not NAME_PATTERN.match(value):
                raise ValueError(f"{label} name {value!r} must be 1–128 letters, digits, '.', '-' or '_'")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.timeout < 0:
            raise ValueError("timeout must be >= 0 (0 means none)")

    def phase(self, name: str) -> Callable[[PhaseFunction], PhaseFunction]:
        """Decorator adding the next phase, run after the ones declared before it."""
        if not NAME_PATTERN.match(name):
            raise ValueError(f"phase name {name!r} must be 1–128 letters, digits, '.', '-' or '_'")
        if any(p.name == name for p in self.phases):
            raise ValueError(f"kind {self.name!r} already has a phase named {name!r}")

        def register(function: PhaseFunction) -> PhaseFunction:
            self.phases.append(PhaseSpec(name, function))
            return function

        return register

    @property
    def phase_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases)

    def phases_for(self, payload: bytes) -> tuple[str, ...]:
        """The phases a job of this kind with `payload` will run (fixed for ordinary kinds)."""
        del payload
        return self.phase_names

    def function_for(self, phase_name: str) -> PhaseFunction | None:
        """The function that runs `phase_name`; None when this kind has no such phase (any more)."""
        for spec in self.phases:
            if spec.name == phase_name:
                return spec.function
        return None
