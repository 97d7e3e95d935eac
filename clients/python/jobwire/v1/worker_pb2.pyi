import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_STATUS_UNSPECIFIED: _ClassVar[AckStatus]
    ACK_STATUS_OK: _ClassVar[AckStatus]
    ACK_STATUS_FENCED: _ClassVar[AckStatus]
    ACK_STATUS_CANCELLED: _ClassVar[AckStatus]
    ACK_STATUS_REJECTED: _ClassVar[AckStatus]
ACK_STATUS_UNSPECIFIED: AckStatus
ACK_STATUS_OK: AckStatus
ACK_STATUS_FENCED: AckStatus
ACK_STATUS_CANCELLED: AckStatus
ACK_STATUS_REJECTED: AckStatus

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "credit", "started", "progress", "phase_done", "released", "ping", "draining", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PHASE_DONE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    credit: WorkerCredit
    started: PhaseStartedReport
    progress: ProgressReport
    phase_done: PhaseDoneReport
    released: ReleasedReport
    ping: WorkerPing
    draining: WorkerDraining
    batch: RequestBatch
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., credit: _Optional[_Union[WorkerCredit, _Mapping]] = ..., started: _Optional[_Union[PhaseStartedReport, _Mapping]] = ..., progress: _Optional[_Union[ProgressReport, _Mapping]] = ..., phase_done: _Optional[_Union[PhaseDoneReport, _Mapping]] = ..., released: _Optional[_Union[ReleasedReport, _Mapping]] = ..., ping: _Optional[_Union[WorkerPing, _Mapping]] = ..., draining: _Optional[_Union[WorkerDraining, _Mapping]] = ..., batch: _Optional[_Union[RequestBatch, _Mapping]] = ...) -> None: ...

class RequestBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ConnectRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[ConnectRequest, _Mapping]]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "assign", "ack", "cancel", "drain", "pong", "batch")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    welcome: WorkerWelcome
    assign: JobAssignment
    ack: WorkerAck
    cancel: CancelJobCommand
    drain: DrainCommand
    pong: WorkerPong
    batch: ResponseBatch
    def __init__(self, welcome: _Optional[_Union[WorkerWelcome, _Mapping]] = ..., assign: _Optional[_Union[JobAssignment, _Mapping]] = ..., ack: _Optional[_Union[WorkerAck, _Mapping]] = ..., cancel: _Optional[_Union[CancelJobCommand, _Mapping]] = ..., drain: _Optional[_Union[DrainCommand, _Mapping]] = ..., pong: _Optional[_Union[WorkerPong, _Mapping]] = ..., batch: _Optional[_Union[ResponseBatch, _Mapping]] = ...) -> None: ...

class ResponseBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ConnectResponse]
    def __init__(self, messages: _Optional[_Iterable[_Union[ConnectResponse, _Mapping]]] = ...) -> None: ...

class WorkerKind(_message.Message):
    __slots__ = ("name", "phases", "default_queue", "default_max_attempts", "default_timeout", "retry_base_delay", "retry_max_delay")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_QUEUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_BASE_DELAY_FIELD_NUMBER: _ClassVar[int]
    RETRY_MAX_DELAY_FIELD_NUMBER: _ClassVar[int]
    name: str
    phases: _containers.RepeatedScalarFieldContainer[str]
    default_queue: str
    default_max_attempts: int
    default_timeout: _duration_pb2.Duration
    retry_base_delay: _duration_pb2.Duration
    retry_max_delay: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., phases: _Optional[_Iterable[str]] = ..., default_queue: _Optional[str] = ..., default_max_attempts: _Optional[int] = ..., default_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_base_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_max_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class HeldJob(_message.Message):
    __slots__ = ("job_id", "attempt", "phase")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    phase: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., phase: _Optional[str] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "sdk_name", "sdk_version", "kinds", "queues", "slots", "held")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SDK_NAME_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    sdk_name: str
    sdk_version: str
    kinds: _containers.RepeatedCompositeFieldContainer[WorkerKind]
    queues: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    held: _containers.RepeatedCompositeFieldContainer[HeldJob]
    def __init__(self, worker_id: _Optional[str] = ..., sdk_name: _Optional[str] = ..., sdk_version: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[WorkerKind, _Mapping]]] = ..., queues: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., held: _Optional[_Iterable[_Union[HeldJob, _Mapping]]] = ...) -> None: ...

class WorkerWelcome(_message.Message):
    __slots__ = ("session_id", "lease_ttl", "ping_interval", "keep_job_ids", "drop_job_ids", "max_result_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    KEEP_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    DROP_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_ttl: _duration_pb2.Duration
    ping_interval: _duration_pb2.Duration
    keep_job_ids: _containers.RepeatedScalarFieldContainer[str]
    drop_job_ids: _containers.RepeatedScalarFieldContainer[str]
    max_result_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., ping_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., keep_job_ids: _Optional[_Iterable[str]] = ..., drop_job_ids: _Optional[_Iterable[str]] = ..., max_result_bytes: _Optional[int] = ...) -> None: ...

class WorkerCredit(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: int
    def __init__(self, slots: _Optional[int] = ...) -> None: ...

class PhaseStartedReport(_message.Message):
    __slots__ = ("job_id", "attempt", "phase")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    phase: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., phase: _Optional[str] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("job_id", "attempt", "phase", "percent", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    phase: str
    percent: float
    message: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., phase: _Optional[str] = ..., percent: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class PhaseFailure(_message.Message):
    __slots__ = ("type", "message", "retryable", "retry_after")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    retryable: bool
    retry_after: _duration_pb2.Duration
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PhaseDoneReport(_message.Message):
    __slots__ = ("job_id", "attempt", "phase", "result", "failure", "cancelled")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    phase: str
    result: bytes
    failure: PhaseFailure
    cancelled: bool
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., phase: _Optional[str] = ..., result: _Optional[bytes] = ..., failure: _Optional[_Union[PhaseFailure, _Mapping]] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class ReleasedReport(_message.Message):
    __slots__ = ("job_id", "attempt", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkerDraining(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class WorkerPing(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class WorkerPong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class DonePhase(_message.Message):
    __slots__ = ("name", "result")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    result: bytes
    def __init__(self, name: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class JobAssignment(_message.Message):
    __slots__ = ("job_id", "attempt", "kind", "queue", "payload", "labels", "phases", "done", "phase", "phase_timeout", "traceparent")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    kind: str
    queue: str
    payload: bytes
    labels: _containers.ScalarMap[str, str]
    phases: _containers.RepeatedScalarFieldContainer[str]
    done: _containers.RepeatedCompositeFieldContainer[DonePhase]
    phase: str
    phase_timeout: _duration_pb2.Duration
    traceparent: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., kind: _Optional[str] = ..., queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., labels: _Optional[_Mapping[str, str]] = ..., phases: _Optional[_Iterable[str]] = ..., done: _Optional[_Iterable[_Union[DonePhase, _Mapping]]] = ..., phase: _Optional[str] = ..., phase_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class WorkerAck(_message.Message):
    __slots__ = ("job_id", "attempt", "phase", "status", "next_phase", "reason", "detail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    phase: str
    status: AckStatus
    next_phase: str
    reason: str
    detail: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., phase: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ..., next_phase: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class CancelJobCommand(_message.Message):
    __slots__ = ("job_id", "attempt", "reason", "grace")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    reason: str
    grace: _duration_pb2.Duration
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DrainCommand(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: _duration_pb2.Duration
    def __init__(self, deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
