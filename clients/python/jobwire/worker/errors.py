"""What a phase handler raises to say how it failed: the server (or a remote worker's session)
turns each into the phase's outcome."""

from __future__ import annotations


class PermanentError(Exception):
    """Raised by a handler when no retry can succeed: the job fails at once."""


class RetryableError(Exception):
    """Raised by a handler to retry, optionally after `retry_after` seconds instead of the backoff."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self.retry_after = retry_after
