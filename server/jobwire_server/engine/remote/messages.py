"""What a worker session says and is told, as plain records: the api layer converts them to and
from the protocol's messages (worker.proto), so the engine never sees protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from jobwire_server.domain.kinds import KindSpec
from jobwire_server.domain.models import Job
from jobwire_server.domain.outcomes import Outcome

# ---------------------------------------------------------------------- worker → server


@dataclass(frozen=True, slots=True)
class HeldJob:
    job_id: str
    attempt: int
    phase: str


@dataclass(frozen=True, slots=True)
class Hello:
    worker_id: str
    sdk: str
    kinds: tuple[KindSpec, ...]
    #: Empty: every queue.
    queues: tuple[str, ...]
    slots: int
    held: tuple[HeldJob, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    job_id: str
    attempt: int
    phase: str


@dataclass(frozen=True, slots=True)
class ProgressReport:
    job_id: str
    attempt: int
    phase: str
    percent: float
    message: str


@dataclass(frozen=True, slots=True)
class PhaseDone:
    job_id: str
    attempt: int
    phase: str
    outcome: Outcome
    #: Bytes of the result as sent (checked against the welcome's limit).
    size: int = 0


@dataclass(frozen=True, slots=True)
class Released:
    job_id: str
    attempt: int
    reason: str


Report = Started | ProgressReport | PhaseDone | Released

# ---------------------------------------------------------------------- server → worker


class AckStatus(StrEnum):
    OK = "OK"
    FENCED = "FENCED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


class AckReason(StrEnum):
    """Why a report was fenced or rejected (worker.proto, WorkerAck.reason)."""

    NONE = ""
    UNKNOWN_JOB = "UNKNOWN_JOB"
    WRONG_ATTEMPT = "WRONG_ATTEMPT"
    NOT_HELD = "NOT_HELD"
    WRONG_PHASE = "WRONG_PHASE"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"
    INVALID_REPORT = "INVALID_REPORT"


@dataclass(frozen=True, slots=True)
class Welcome:
    session_id: str
    lease_ttl: float
    ping_interval: float
    keep: tuple[str, ...]
    drop: tuple[str, ...]
    max_result_bytes: int


@dataclass(frozen=True, slots=True)
class Assign:
    job: Job
    #: Index of the phase to run.
    phase: int


@dataclass(frozen=True, slots=True)
class Ack:
    job_id: str
    attempt: int
    phase: str
    status: AckStatus
    next_phase: str = ""
    reason: AckReason = AckReason.NONE
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CancelCommand:
    job_id: str
    attempt: int
    reason: str
    grace: float


@dataclass(frozen=True, slots=True)
class DrainCommand:
    deadline: float


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


Command = Welcome | Assign | Ack | CancelCommand | DrainCommand | Pong

