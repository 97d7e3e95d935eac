"""jobwire: the Python SDK of the jobwire job-control service.

``jobwire.Client`` is the asynchronous client (``grpc.aio``); ``jobwire.sync.Client`` is a blocking
facade with the same methods. Calls return typed, immutable models (:class:`Job`, :class:`JobEvent`,
...) and raise :class:`JobwireError` subclasses.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("jobwire")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

from jobwire import sync
from jobwire.client import Client, JobHandle, RetryPolicy, TLSConfig
from jobwire.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidTransition,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobwireError,
    PermissionDenied,
    QueueNotFound,
    ResourceExhausted,
    ScheduleFromConfig,
    ScheduleNotFound,
    Unauthenticated,
    Unavailable,
)
from jobwire.models import (
    BulkResult,
    CatchupPolicy,
    EnqueueSpec,
    EventType,
    Job,
    JobError,
    JobEvent,
    JobState,
    OverlapPolicy,
    Phase,
    PhaseState,
    Progress,
    PruneResult,
    Queue,
    QueueSettings,
    QueueStats,
    Schedule,
    ScheduleSpec,
    TriggerResult,
    WaitingReason,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)

__all__ = [
    "AlreadyExists",
    "BulkResult",
    "CatchupPolicy",
    "Client",
    "EnqueueSpec",
    "EventType",
    "InvalidArgument",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobwireError",
    "OverlapPolicy",
    "PermissionDenied",
    "Phase",
    "PhaseState",
    "Progress",
    "PruneResult",
    "Queue",
    "QueueNotFound",
    "QueueSettings",
    "QueueStats",
    "ResourceExhausted",
    "RetryPolicy",
    "Schedule",
    "ScheduleFromConfig",
    "ScheduleNotFound",
    "ScheduleSpec",
    "TLSConfig",
    "TriggerResult",
    "Unauthenticated",
    "Unavailable",
    "WaitingReason",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "sync",
]
