"""Mapping of gRPC statuses (with google.rpc details) to the SDK's typed errors."""

from __future__ import annotations

import grpc
import jobwire
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from jobwire import _convert
from jobwire.models import Job, JobError, JobState


def _rpc_error(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
) -> aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="jobwire", metadata=metadata or {}))
        status.details.append(detail)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    trailers = aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return aio.AioRpcError(code, aio.Metadata(), trailers, details=message)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", jobwire.JobNotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TRANSITION", jobwire.InvalidTransition),
        (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_KIND", jobwire.InvalidArgument),
        (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", jobwire.AlreadyExists),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE", jobwire.ResourceExhausted),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", jobwire.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", jobwire.PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", jobwire.Unavailable),
        (grpc.StatusCode.INTERNAL, "", jobwire.JobwireError),
    ],
)
def test_status_codes_map_to_typed_errors(
    code: grpc.StatusCode, reason: str, expected: type[jobwire.JobwireError]
) -> None:
    error = _convert.error_from_rpc(_rpc_error(code, "it went wrong", reason))
    assert type(error) is expected
    assert error.code is code
    assert error.reason == reason
    assert error.message == "it went wrong"
    assert error.code_name == code.name
    assert str(error) == f"it went wrong ({code.name})"


def test_bad_request_violations_and_error_info_metadata() -> None:
    error = _convert.error_from_rpc(
        _rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad request",
            "INVALID_ARGUMENT",
            violations=[("kind", "required"), ("priority", "must be 0-10")],
        )
    )
    assert isinstance(error, jobwire.InvalidArgument)
    assert error.violations == [("kind", "required"), ("priority", "must be 0-10")]


def test_watch_too_slow_metadata() -> None:
    error = _convert.error_from_rpc(
        _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", "WATCH_TOO_SLOW", {"last_sequence": "12"})
    )
    assert isinstance(error, jobwire.ResourceExhausted)
    assert error.metadata == {"last_sequence": "12"}


def test_errors_without_details_still_map() -> None:
    plain = aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, aio.Metadata(), aio.Metadata(), details="too big")
    error = _convert.error_from_rpc(plain)
    assert isinstance(error, jobwire.ResourceExhausted)
    assert (error.reason, error.metadata, error.violations) == ("", {}, [])


def test_garbled_details_do_not_hide_the_error() -> None:
    trailers = aio.Metadata(("grpc-status-details-bin", b"\xff\xff\xff"))
    error = _convert.error_from_rpc(aio.AioRpcError(grpc.StatusCode.NOT_FOUND, aio.Metadata(), trailers, "gone"))
    assert isinstance(error, jobwire.JobNotFound)
    assert error.reason == ""


def test_only_unavailable_is_retryable() -> None:
    assert jobwire.Unavailable(grpc.StatusCode.UNAVAILABLE, "x").retryable
    assert not jobwire.JobNotFound(grpc.StatusCode.NOT_FOUND, "x").retryable


def test_job_outcome_errors_carry_the_job() -> None:
    job = Job(id="j1", state=JobState.FAILED, error=JobError(message="boom", type="ValueError"))
    failed = jobwire.JobFailed(job)
    assert failed.job is job and failed.error is job.error
    assert failed.code is None and failed.code_name == "JOB_FAILED"
    assert "boom" in str(failed)
    cancelled = jobwire.JobCancelled(Job(id="j2", state=JobState.CANCELLED, cancel_reason="user"))
    assert cancelled.code_name == "JOB_CANCELLED" and "user" in cancelled.message
