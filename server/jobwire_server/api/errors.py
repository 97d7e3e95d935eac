"""Errors → gRPC status, in one place.

Every status carries exactly one ``google.rpc.ErrorInfo`` (domain ``jobwire``, a stable ``reason``
and string metadata); INVALID_ARGUMENT and PAYLOAD_TOO_LARGE also carry a ``google.rpc.BadRequest``
with one field violation per bad field. The details travel in the ``grpc-status-details-bin``
trailer (grpcio-status), where ``rpc_status.from_call`` on the client reads them back.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc import aio
from grpc_status import rpc_status

from jobwire_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidTransition,
    JobNotFound,
    KindInProcess,
    KindMismatch,
    PayloadTooLarge,
    QueueNotFound,
    RequestIdReused,
    ScheduleExists,
    ScheduleFromConfig,
    ScheduleNotFound,
    ShuttingDown,
    StorageCorrupt,
    StorageError,
    StorageFull,
)

__all__ = ["DOMAIN", "INTERNAL_REASON", "abort", "abort_with", "status_with", "to_status", "unary"]

DOMAIN: Final = "jobwire"
INTERNAL_REASON: Final = "INTERNAL"
#: Status messages go in a header; keep them well under gRPC's metadata limits.
MAX_MESSAGE_CHARS: Final = 2000
MAX_DESCRIPTION_CHARS: Final = 500

_log = logging.getLogger("jobwire.api")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _build(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str] | None,
           violations: tuple[FieldViolation, ...] = ()) -> grpc.Status:
    status: Any = status_pb2.Status(code=code.value[0], message=_clip(message, MAX_MESSAGE_CHARS))
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    status.details.add().Pack(info)
    if violations:
        bad_request = error_details_pb2.BadRequest()
        for violation in violations:
            bad_request.field_violations.add(field=violation.field,
                                             description=_clip(violation.description, MAX_DESCRIPTION_CHARS))
        status.details.add().Pack(bad_request)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def status_with(code: grpc.StatusCode, message: str, reason: str,
                metadata: dict[str, str] | None = None) -> grpc.Status:
    """A status with one ErrorInfo, for errors raised in the api layer itself
    (UNAUTHENTICATED, PERMISSION_DENIED, WATCH_TOO_SLOW with ``{"last_sequence": "17"}``, …)."""
    return _build(code, message, reason, metadata)


def to_status(exc: BaseException) -> grpc.Status:
    """The gRPC status for `exc`. Anything that is not a known domain error is a bug: it is logged
    with its traceback and the client gets INTERNAL with a generic message."""
    if isinstance(exc, InvalidArgument):
        return _build(grpc.StatusCode.INVALID_ARGUMENT, str(exc) or "invalid argument", exc.reason, None,
                      exc.violations)
    if isinstance(exc, JobNotFound):
        return _build(grpc.StatusCode.NOT_FOUND, str(exc), exc.reason, {"job_id": exc.job_id})
    if isinstance(exc, InvalidTransition):
        return _build(grpc.StatusCode.FAILED_PRECONDITION, str(exc), exc.reason,
                      {"job_id": exc.job_id, "state": str(exc.state), "action": exc.action})
    named = _named_resource_status(exc)
    if named is not None:
        return named
    if isinstance(exc, RequestIdReused):
        return _build(grpc.StatusCode.ALREADY_EXISTS, str(exc), exc.reason,
                      {"request_id": _clip(exc.request_id, 200)})
    if isinstance(exc, PayloadTooLarge):
        return _build(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.reason,
                      {"field": exc.field, "size": str(exc.size), "limit": str(exc.limit)},
                      (FieldViolation(exc.field, f"must be at most {exc.limit} bytes, got {exc.size}"),))
    if isinstance(exc, ShuttingDown):
        return _build(grpc.StatusCode.UNAVAILABLE, str(exc), exc.reason, None)
    if isinstance(exc, StorageError):
        code = (grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, StorageFull)
                else grpc.StatusCode.DATA_LOSS if isinstance(exc, StorageCorrupt) else grpc.StatusCode.UNAVAILABLE)
        return _build(code, str(exc), exc.reason, {"database": exc.path})
    _log.exception("unexpected error in a gRPC call", exc_info=exc)
    return _build(grpc.StatusCode.INTERNAL, "internal error", INTERNAL_REASON, None)


def _named_resource_status(exc: BaseException) -> grpc.Status | None:
    """The status of an error about a queue, a schedule or a kind; None for any other error."""
    if isinstance(exc, QueueNotFound):
        return _build(grpc.StatusCode.NOT_FOUND, str(exc), exc.reason, {"queue": exc.queue})
    if isinstance(exc, ScheduleNotFound):
        return _build(grpc.StatusCode.NOT_FOUND, str(exc), exc.reason, {"schedule_id": exc.schedule_id})
    if isinstance(exc, ScheduleExists):
        return _build(grpc.StatusCode.ALREADY_EXISTS, str(exc), exc.reason, {"schedule_id": exc.schedule_id})
    if isinstance(exc, ScheduleFromConfig):
        return _build(grpc.StatusCode.FAILED_PRECONDITION, str(exc), exc.reason,
                      {"schedule_id": exc.schedule_id, "action": exc.action})
    if isinstance(exc, KindMismatch):
        return _build(grpc.StatusCode.FAILED_PRECONDITION, str(exc), exc.reason,
                      {"kind": exc.kind, "phases": ",".join(exc.known), "declared": ",".join(exc.declared)})
    if isinstance(exc, KindInProcess):
        return _build(grpc.StatusCode.FAILED_PRECONDITION, str(exc), exc.reason, {"kind": exc.kind})
    return None


async def abort_with(context: aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    """End the call with `status` (raises; never returns)."""
    await context.abort_with_status(status)


async def abort(context: aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the call with the status :func:`to_status` gives for `exc` (raises; never returns)."""
    await context.abort_with_status(to_status(exc))


_Self = TypeVar("_Self")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def unary(method: Callable[[_Self, _Req, Any], Awaitable[_Resp]]) -> Callable[[_Self, _Req, Any], Awaitable[_Resp]]:
    """Map domain errors to statuses in one place for unary RPCs."""

    @functools.wraps(method)
    async def call(self: _Self, request: _Req, context: aio.ServicerContext[Any, Any]) -> _Resp:
        try:
            return await method(self, request, context)
        except aio.AbortError:
            raise
        except Exception as exc:  # domain errors get their status; anything else is INTERNAL, logged
            await abort(context, exc)

    return call
