"""Request bytes that do not decode, sent raw over a real channel to every method the server has:
each call ends INVALID_ARGUMENT with reason MALFORMED_REQUEST and a message naming the request
type; the server logs no traceback and at most one line about them, and keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from jobwire.v1 import jobwire_pb2, jobwire_pb2_grpc

from tests.conftest import ServerProcess
from tests.testkit import error_details, running

CALL_TIMEOUT = 10.0

METHODS: list[MethodDescriptor] = [
    *jobwire_pb2.DESCRIPTOR.services_by_name["JobService"].methods,
    *(m for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods if m.name in ("Check", "Watch")),
    *reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods,
]


def _string_field(message: Descriptor) -> FieldDescriptor | None:
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return field
    return None


def bad_bytes(message: Descriptor) -> dict[str, bytes]:
    """Bytes that are not a valid `message`, each broken in a different way."""
    samples = {
        "truncated-varint": b"\x08\xff",
        "length-past-end": b"\x0a\x05ab",
        "overlong-varint": b"\x08" + b"\xff" * 10 + b"\x01",
        "end-group-without-start": b"\x0c",
        "field-number-zero": b"\x00\x01",
    }
    text = _string_field(message)
    if text is not None:
        samples["bad-utf8"] = bytes([text.number << 3 | 2, 2]) + b"\xff\xfe"
    return samples


CASES = [pytest.param(method, data, id=f"{method.name}-{name}")
         for method in METHODS for name, data in bad_bytes(method.input_type).items()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("decode"))) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


def call_raw(channel: grpc.Channel, method: MethodDescriptor, data: bytes) -> grpc.RpcError:
    """Send `data` as the request of `method` (unchanged: no serializer) and return the error."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    call: Any
    if method.client_streaming:
        call = channel.stream_stream(path)(iter([data]), timeout=CALL_TIMEOUT)
    elif method.server_streaming:
        call = channel.unary_stream(path)(data, timeout=CALL_TIMEOUT)
    else:
        call = channel.unary_unary(path)
    try:
        if method.client_streaming or method.server_streaming:
            list(call)
        else:
            call(data, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{path} accepted undecodable bytes {data!r}")


@pytest.mark.parametrize(("method", "data"), CASES)
def test_undecodable_request_is_invalid_argument(channel: grpc.Channel, method: MethodDescriptor,
                                                 data: bytes) -> None:
    error = call_raw(channel, method, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"not a valid {method.input_type.full_name} message" in error.details()
    assert error_details(error)[0] == "MALFORMED_REQUEST"


def test_a_burst_of_bad_bytes_logs_one_line_and_no_traceback(channel: grpc.Channel, server: ServerProcess) -> None:
    before = len(server.log())
    enqueue = jobwire_pb2.DESCRIPTOR.services_by_name["JobService"].methods_by_name["Enqueue"]
    for index in range(500):
        error = call_raw(channel, enqueue, b"\x0a\x05ab" if index % 2 else b"\x12\x02\xff\xfe")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    written = server.log()[before:]
    assert "Traceback" not in written
    assert written.count("could not be decoded") <= 1, written
    assert len(written) < 1000, written


def test_server_serves_valid_requests_after_bad_bytes(channel: grpc.Channel) -> None:
    stub = jobwire_pb2_grpc.JobServiceStub(channel)
    job = stub.Enqueue(jobwire_pb2.EnqueueRequest(kind="noop"), timeout=CALL_TIMEOUT).job
    assert stub.GetJob(jobwire_pb2.GetJobRequest(id=job.id), timeout=CALL_TIMEOUT).id == job.id
    events = list(stub.WatchJob(jobwire_pb2.WatchJobRequest(id=job.id), timeout=CALL_TIMEOUT))
    assert events[-1].job.state == jobwire_pb2.JOB_STATE_SUCCEEDED
