"""Typed exceptions raised by the jobwire SDK.

Every failed call raises a :class:`JobwireError` subclass chosen from the gRPC status code; its
``reason`` is the stable ``google.rpc.ErrorInfo`` reason the server attached (``JOB_NOT_FOUND``,
``INVALID_TRANSITION``, ``PAYLOAD_TOO_LARGE``, ...), which is what code should match on. Status
messages are for humans and may change.

:class:`JobFailed` and :class:`JobCancelled` are not call failures: ``JobHandle.result()`` raises
them when the job itself ended without success, and they carry that job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from jobwire.models import Job, JobError


class JobwireError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        code: the gRPC status code, or ``None`` for errors that are not call failures.
        message: the human-readable status message.
        reason: the ``google.rpc.ErrorInfo`` reason (empty when the server sent none).
        metadata: the ``ErrorInfo`` metadata (for example ``{"last_sequence": "12"}``).
        violations: ``(field, description)`` pairs from a ``google.rpc.BadRequest`` detail.
    """

    retryable: bool = False
    """Whether repeating the same call later may succeed."""

    def __init__(
        self,
        code: grpc.StatusCode | None,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.violations: list[tuple[str, str]] = list(violations)

    @property
    def code_name(self) -> str:
        """The status code's name (``"NOT_FOUND"``), or the reason when there is no status code."""
        return self.code.name if self.code is not None else self.reason

    def __str__(self) -> str:
        return f"{self.message} ({self.code_name})" if self.code_name else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code_name!r}, message={self.message!r}, reason={self.reason!r})"


class JobNotFound(JobwireError):
    """NOT_FOUND: no job with that id (it never existed, or retention deleted it)."""


class InvalidTransition(JobwireError):
    """FAILED_PRECONDITION: the job's current state does not allow the operation."""


class ScheduleNotFound(JobwireError):
    """NOT_FOUND with reason SCHEDULE_NOT_FOUND: no schedule with that id."""


class QueueNotFound(JobwireError):
    """NOT_FOUND with reason QUEUE_NOT_FOUND: the queue has no settings and holds no job."""


class ScheduleFromConfig(JobwireError):
    """FAILED_PRECONDITION with reason SCHEDULE_FROM_CONFIG: the schedule is declared in the server's
    config file, so only that file changes or deletes it."""


class InvalidArgument(JobwireError):
    """INVALID_ARGUMENT: bad input; ``violations`` names each bad field (reason may be UNKNOWN_KIND)."""


class AlreadyExists(JobwireError):
    """ALREADY_EXISTS: a ``request_id`` was reused for a different request (REQUEST_ID_REUSED), or a
    schedule id is taken (SCHEDULE_EXISTS)."""


class ResourceExhausted(JobwireError):
    """RESOURCE_EXHAUSTED: a payload or message is too large, or a watcher read too slowly."""


class Unauthenticated(JobwireError):
    """UNAUTHENTICATED: missing or invalid credentials."""


class PermissionDenied(JobwireError):
    """PERMISSION_DENIED: the credentials lack the scope the call needs."""


class Unavailable(JobwireError):
    """UNAVAILABLE: the server cannot be reached or is shutting down; retrying later may work."""

    retryable = True


class _JobOutcomeError(JobwireError):
    def __init__(self, job: Job, message: str, reason: str) -> None:
        super().__init__(None, message, reason)
        self.job = job

    @property
    def error(self) -> JobError | None:
        """The job's latest failure, if any."""
        return self.job.error


class JobFailed(_JobOutcomeError):
    """The job ended FAILED; ``job`` is the job as it ended and ``error`` its last failure."""

    def __init__(self, job: Job) -> None:
        detail = f": {job.error.message}" if job.error is not None and job.error.message else ""
        super().__init__(job, f"job {job.id} failed{detail}", "JOB_FAILED")


class JobCancelled(_JobOutcomeError):
    """The job ended CANCELLED; ``job`` is the job as it ended."""

    def __init__(self, job: Job) -> None:
        detail = f": {job.cancel_reason}" if job.cancel_reason else ""
        super().__init__(job, f"job {job.id} was cancelled{detail}", "JOB_CANCELLED")


_BY_CODE: Mapping[grpc.StatusCode, type[JobwireError]] = {
    grpc.StatusCode.NOT_FOUND: JobNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidTransition,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


_BY_REASON: Mapping[str, type[JobwireError]] = {
    "SCHEDULE_NOT_FOUND": ScheduleNotFound,
    "QUEUE_NOT_FOUND": QueueNotFound,
    "SCHEDULE_FROM_CONFIG": ScheduleFromConfig,
}


def error_class_for(code: grpc.StatusCode, reason: str = "") -> type[JobwireError]:
    """The exception class the SDK raises for a status code and ErrorInfo reason (``JobwireError``
    when none is specific)."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, JobwireError)
