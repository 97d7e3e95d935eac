"""Error → gRPC status mapping: codes, one ErrorInfo each, BadRequest details, and abort() over a real call."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc import aio
from grpc_status import rpc_status
from jobwire_server.api import errors
from jobwire_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    InvalidTransition,
    JobNotFound,
    PayloadTooLarge,
    RequestIdReused,
    SchemaTooNew,
    ShuttingDown,
)

JOB_ID = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"


def _decode(status: grpc.Status) -> Any:
    """The google.rpc.Status carried in the status's trailing metadata."""
    [(key, value)] = list(status.trailing_metadata)
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    assert rich.code == status.code.value[0]
    assert rich.message == status.details
    return rich


def _details(rich: Any) -> tuple[Any, Any | None]:
    """(the one ErrorInfo, the BadRequest or None); fails on anything else."""
    infos, bad_requests = [], []
    for detail in rich.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            bad_requests.append(bad)
        else:
            pytest.fail(f"unexpected detail {detail.type_url}")
    assert len(infos) == 1 and len(bad_requests) <= 1
    assert infos[0].domain == "jobwire"
    return infos[0], bad_requests[0] if bad_requests else None


@pytest.mark.parametrize(("exc", "code", "reason", "metadata"), [
    (JobNotFound(JOB_ID), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", {"job_id": JOB_ID}),
    (InvalidTransition(JOB_ID, "SUCCEEDED", "cancel"), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TRANSITION",
     {"job_id": JOB_ID, "state": "SUCCEEDED", "action": "cancel"}),
    (RequestIdReused("req-1"), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", {"request_id": "req-1"}),
    (ShuttingDown(), grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", {}),
])
def test_simple_mappings(exc: Exception, code: grpc.StatusCode, reason: str, metadata: dict[str, str]) -> None:
    status = errors.to_status(exc)
    assert status.code == code
    assert status.details == str(exc)
    info, bad = _details(_decode(status))
    assert info.reason == reason
    assert dict(info.metadata) == metadata
    assert bad is None


def test_invalid_argument_carries_every_violation() -> None:
    exc = InvalidArgument([FieldViolation("kind", "required"), FieldViolation("requests[3].priority", "too big")])
    status = errors.to_status(exc)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = _details(_decode(status))
    assert info.reason == "INVALID_ARGUMENT"
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("kind", "required"), ("requests[3].priority", "too big")]


def test_unknown_kind_keeps_its_reason() -> None:
    status = errors.to_status(InvalidArgument([FieldViolation("kind", "no handler")], reason="UNKNOWN_KIND"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = _details(_decode(status))
    assert info.reason == "UNKNOWN_KIND"
    assert bad is not None and bad.field_violations[0].field == "kind"


def test_payload_too_large() -> None:
    status = errors.to_status(PayloadTooLarge("requests[1].payload", 2_000_000, 1 << 20))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, bad = _details(_decode(status))
    assert info.reason == "PAYLOAD_TOO_LARGE"
    assert dict(info.metadata) == {"field": "requests[1].payload", "size": "2000000", "limit": str(1 << 20)}
    assert bad is not None
    [violation] = bad.field_violations
    assert violation.field == "requests[1].payload" and "1048576" in violation.description


@pytest.mark.parametrize("exc", [RuntimeError("secret database path /x/y"), KeyError("k"),
                                 SchemaTooNew("schema 9 is newer"), ValueError()])
def test_anything_else_is_internal_generic_and_logged(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="jobwire.api"):
        status = errors.to_status(exc)
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "internal error"
    info, bad = _details(_decode(status))
    assert info.reason == "INTERNAL" and bad is None
    [record] = [r for r in caplog.records if r.name == "jobwire.api"]
    assert record.exc_info is not None and record.exc_info[1] is exc


def test_status_with() -> None:
    status = errors.status_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher too slow", "WATCH_TOO_SLOW",
                                {"last_sequence": "17"})
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and status.details == "watcher too slow"
    info, bad = _details(_decode(status))
    assert (info.reason, dict(info.metadata), bad) == ("WATCH_TOO_SLOW", {"last_sequence": "17"}, None)

    status = errors.status_with(grpc.StatusCode.UNAUTHENTICATED, "missing token", "UNAUTHENTICATED")
    info, _ = _details(_decode(status))
    assert status.code == grpc.StatusCode.UNAUTHENTICATED and dict(info.metadata) == {}


def test_huge_messages_are_clipped() -> None:
    exc = InvalidArgument([FieldViolation(f"f{i}", "x" * 1000) for i in range(50)])
    status = errors.to_status(exc)
    assert len(status.details) <= errors.MAX_MESSAGE_CHARS
    _, bad = _details(_decode(status))
    assert bad is not None
    assert len(bad.field_violations) == 50
    assert all(len(v.description) <= errors.MAX_DESCRIPTION_CHARS for v in bad.field_violations)


# ----------------------------------------------------------------------------- over a real call

_ERRORS: dict[str, BaseException] = {
    "not_found": JobNotFound(JOB_ID),
    "invalid": InvalidArgument([FieldViolation("priority", "must be between 1 and 10 – got 11")]),
    "boom": RuntimeError("boom"),
}


async def _handler(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    name = request.decode()
    if name == "slow":
        await errors.abort_with(context, errors.status_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow",
                                                            "WATCH_TOO_SLOW", {"last_sequence": "5"}))
    await errors.abort(context, _ERRORS[name])


@pytest.fixture
async def channel() -> AsyncIterator[aio.Channel]:
    server = aio.server()
    handler = grpc.method_handlers_generic_handler(
        "test.Errors", {"Fail": grpc.unary_unary_rpc_method_handler(_handler)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        await server.stop(None)


@pytest.mark.parametrize(("name", "code", "reason"), [
    ("not_found", grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
    ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ("boom", grpc.StatusCode.INTERNAL, "INTERNAL"),
    ("slow", grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_TOO_SLOW"),
])
async def test_abort_sends_rich_status(channel: aio.Channel, name: str, code: grpc.StatusCode, reason: str) -> None:
    method: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Errors/Fail")
    call = method(name.encode())
    with pytest.raises(aio.AioRpcError) as info:
        await call
    assert info.value.code() == code
    rich = await rpc_status.aio.from_call(call)
    assert rich is not None and rich.message == info.value.details()
    error_info, bad = _details(rich)
    assert error_info.reason == reason
    if name == "invalid":
        assert bad is not None and bad.field_violations[0].field == "priority"
    if name == "slow":
        assert dict(error_info.metadata) == {"last_sequence": "5"}
