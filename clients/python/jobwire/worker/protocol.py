"""The worker's side of worker.proto: building its messages from handler outcomes and kinds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.protobuf import duration_pb2

from jobwire.v1 import worker_pb2
from jobwire.worker.errors import PermanentError, RetryableError
from jobwire.worker.kind import Kind


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def declare(kind: Kind) -> worker_pb2.WorkerKind:
    """A kind as the hello declares it. Its phase list must stay the same once the server knows it."""
    message = worker_pb2.WorkerKind(name=kind.name, phases=list(kind.phase_names), default_queue=kind.queue,
                                    default_max_attempts=kind.max_attempts)
    if kind.timeout:
        message.default_timeout.CopyFrom(duration(kind.timeout))
    message.retry_base_delay.CopyFrom(duration(kind.retry.base_delay or 1e-9))
    message.retry_max_delay.CopyFrom(duration(kind.retry.max_delay or 1e-9))
    return message


def to_bytes(value: Any) -> bytes:
    """A phase's return value as its result: bytes as they are, str as UTF-8, else JSON."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"phase returned a {type(value).__name__}, which is not bytes, str or JSON") from exc


def failure(exc: BaseException) -> worker_pb2.PhaseFailure:
    """How a handler's exception is reported: PermanentError is not retried, RetryableError may name
    its own delay, anything else is retried with the kind's backoff."""
    message = worker_pb2.PhaseFailure(type=type(exc).__name__, message=(str(exc) or type(exc).__name__)[:4096],
                                      retryable=not isinstance(exc, PermanentError))
    if isinstance(exc, RetryableError) and exc.retry_after is not None:
        message.retry_after.CopyFrom(duration(exc.retry_after))
    return message


def phase_done(job_id: str, attempt: int, phase: str, task: asyncio.Future[bytes] | None,
               *, cancelled: bool = False) -> worker_pb2.ConnectRequest:
    """The report of a finished phase task (None or `cancelled`: stopped after a cancel)."""
    done = worker_pb2.PhaseDoneReport(job_id=job_id, attempt=attempt, phase=phase)
    if task is None or cancelled or task.cancelled():
        done.cancelled = True
    elif (error := task.exception()) is not None:
        done.failure.CopyFrom(failure(error))
    else:
        done.result = task.result()
    return worker_pb2.ConnectRequest(phase_done=done)
