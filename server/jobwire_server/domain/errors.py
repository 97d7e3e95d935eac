"""Errors the domain and store raise; `api/` maps each to one gRPC status in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class JobwireError(Exception):
    """Base class; `reason` is the stable machine-readable code clients switch on."""

    reason = "JOBWIRE_ERROR"


class JobNotFound(JobwireError):
    reason = "JOB_NOT_FOUND"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(JobwireError):
    reason = "INVALID_TRANSITION"

    def __init__(self, job_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {state}")
        self.job_id, self.state, self.action = job_id, state, action


class RequestIdReused(JobwireError):
    reason = "REQUEST_ID_REUSED"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} was already used for a different request")
        self.request_id = request_id


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(JobwireError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], reason: str = "INVALID_ARGUMENT") -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = tuple(violations)
        self.reason = reason


class PayloadTooLarge(JobwireError):
    reason = "PAYLOAD_TOO_LARGE"

    def __init__(self, field: str, size: int, limit: int) -> None:
        super().__init__(f"{field} is {size} bytes; the limit is {limit}")
        self.field, self.size, self.limit = field, size, limit


class ShuttingDown(JobwireError):
    reason = "SHUTTING_DOWN"

    def __init__(self) -> None:
        super().__init__("the server is shutting down; try another replica or retry shortly")


class ScheduleNotFound(JobwireError):
    reason = "SCHEDULE_NOT_FOUND"

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id} not found")
        self.schedule_id = schedule_id


class ScheduleExists(JobwireError):
    reason = "SCHEDULE_EXISTS"

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id} already exists")
        self.schedule_id = schedule_id


class ScheduleFromConfig(JobwireError):
    """The schedule is declared in the server's config file: only the file changes it."""

    reason = "SCHEDULE_FROM_CONFIG"

    def __init__(self, schedule_id: str, action: str) -> None:
        super().__init__(f"cannot {action} schedule {schedule_id}: it is declared in the server's config file; "
                         "change it there")
        self.schedule_id, self.action = schedule_id, action


class KindMismatch(JobwireError):
    """A worker declared a kind the server knows with another phase list."""

    reason = "KIND_MISMATCH"

    def __init__(self, kind: str, known: tuple[str, ...], declared: tuple[str, ...]) -> None:
        super().__init__(f"kind {kind!r} is known with phases {list(known)}, but this worker declares "
                         f"{list(declared)}; give the changed kind a new name (jobs already enqueued keep their "
                         "phases)")
        self.kind, self.known, self.declared = kind, known, declared


class KindInProcess(JobwireError):
    """A worker declared a kind whose handler runs inside the server."""

    reason = "KIND_IN_PROCESS"

    def __init__(self, kind: str) -> None:
        super().__init__(f"kind {kind!r} runs inside the server (--handlers); a remote worker cannot declare it")
        self.kind = kind


class QueueNotFound(JobwireError):
    """No queue of that name has settings or holds a job."""

    reason = "QUEUE_NOT_FOUND"

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue} not found: it has no settings and holds no job")
        self.queue = queue


class SchemaTooNew(JobwireError):
    reason = "SCHEMA_TOO_NEW"


class StorageError(JobwireError):
    """The database cannot serve the request now; `path` names the file, `cause` what failed."""

    reason = "STORAGE_UNAVAILABLE"

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"database {path}: {cause}")
        self.path, self.cause = path, cause


class StorageFull(StorageError):
    """The disk (or the database's size limit) is full: writes fail until space is freed."""

    reason = "STORAGE_FULL"


class StorageUnavailable(StorageError):
    """Writes fail (an I/O error, a read-only file or file system)."""

    reason = "STORAGE_UNAVAILABLE"


class StorageCorrupt(StorageError):
    """The database file is damaged: restore it from a backup (docs/operations.md)."""

    reason = "STORAGE_CORRUPT"
