"""A client of the standard gRPC health service (``grpc.health.v1.Health``).

The two messages have one field each, so they are encoded here rather than pulling in
``grpcio-health-checking``: the SDK needs only grpcio, protobuf and grpcio-status.
"""

from __future__ import annotations

import grpc

from jobwire.client import TLSConfig

#: The name under which the server reports whether it accepts jobs.
JOB_SERVICE = "jobwire.v1.JobService"

_CHECK = "/grpc.health.v1.Health/Check"
_WATCH = "/grpc.health.v1.Health/Watch"
#: HealthCheckResponse.ServingStatus by number.
STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def encode_request(service: str) -> bytes:
    """``HealthCheckRequest{service}`` in the protobuf wire format (field 1, length-delimited)."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_status(message: bytes) -> str:
    """The ``status`` (field 1, varint) of a ``HealthCheckResponse``, by name."""
    pos, status = 0, 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        if key & 7 != 0:
            raise ValueError(f"unexpected wire type {key & 7} in a health response")
        value, pos = _read_varint(message, pos)
        if key >> 3 == 1:
            status = value
    return STATUSES[status] if status < len(STATUSES) else str(status)


def health_status(target: str, service: str = JOB_SERVICE, *, wait: float = 0.0,
                  tls: TLSConfig | None = None) -> str:
    """The health status of `service` at `target`.

    With `wait` > 0, waits up to that many seconds for the server to be reachable and `service` to
    be SERVING, following the server's ``Watch`` stream (no polling); raises ``grpc.RpcError`` with
    DEADLINE_EXCEEDED when it is not SERVING by then. Without it, asks once with ``Check``.
    """
    channel = grpc.insecure_channel(target) if tls is None else grpc.secure_channel(target, tls.credentials())
    with channel:
        if wait <= 0:
            check = channel.unary_unary(_CHECK, request_serializer=encode_request,
                                        response_deserializer=decode_status)
            status: str = check(service, timeout=10.0)
            return status
        watch = channel.unary_stream(_WATCH, request_serializer=encode_request,
                                     response_deserializer=decode_status)
        stream = watch(service, timeout=wait, wait_for_ready=True)
        try:
            for status in stream:
                if status == "SERVING":
                    return status
        finally:
            stream.cancel()
        return "NOT_SERVING"  # the server ended the stream (it is stopping)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in a health response")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
