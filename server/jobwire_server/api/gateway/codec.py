"""JSON <-> protobuf for the gateway, with the proto3 JSON mapping (``google.protobuf.json_format``).

A request message is built from the JSON body, the path's fields and the query string (``?states=QUEUED
&states=RUNNING&pageSize=50&labels.team=data``: a field by its JSON or proto name, repeated by repeating
it, a map entry as ``map.key``). What does not decode is INVALID_ARGUMENT with a field violation, as a
bad gRPC request is. An error is the ``google.rpc.Status`` of the gRPC call, as JSON, with the HTTP
status ``google.api.http`` gateways give its code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from jobwire_server.domain.errors import FieldViolation, InvalidArgument

__all__ = ["HTTP_STATUS", "decode_request", "http_status", "message_class", "message_json", "status_json"]

# Imported for their descriptors: the Any details of a status name them.
_DETAIL_TYPES: Final = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest)

#: gRPC code -> HTTP status, as grpc-gateway and Google's APIs map them.
HTTP_STATUS: Final[Mapping[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def message_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON form, every field present (defaults included) so clients see one shape."""
    result: dict[str, Any] = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return result


def decode_request(descriptor: Descriptor, body: bytes | None, path: Mapping[str, str],
                   query: Iterable[tuple[str, str]], aliases: Mapping[str, str] | None = None) -> Message:
    """The request message; raises InvalidArgument naming the part that does not decode."""
    data: dict[str, Any] = _body(body) if body is not None else {}
    _check_types(data, descriptor)
    for key, value in query:
        _put(data, descriptor, (aliases or {}).get(key, key), value)
    for name, value in path.items():
        _drop_path_field(data, descriptor, name)
        data[name] = value
    message = message_class(descriptor)()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        problem = str(exc).splitlines()[0]
        raise InvalidArgument([FieldViolation(_field_of(problem), problem)]) from None
    return message


def _drop_path_field(data: dict[str, Any], descriptor: Descriptor, name: str) -> None:
    """A body may repeat a field the path fills (the path wins), but as the string it is: a value
    of another type is refused, as the OpenAPI document's schema says."""
    field = descriptor.fields_by_name.get(name)
    for key in {name} if field is None else {name, field.json_name}:
        given = data.pop(key, None)
        if given is not None and not isinstance(given, str):
            raise InvalidArgument([FieldViolation(name, f"must be a string, got {json.dumps(given)[:40]}")])


def _check_types(data: dict[str, Any], descriptor: Descriptor, prefix: str = "") -> None:
    """What the proto3 JSON parser lets through but the document's types do not allow: true or
    false for a floating-point field (read as 1 or 0)."""
    for key, value in data.items():
        field = next((f for f in descriptor.fields if key in (f.name, f.json_name)), None)
        if field is None:
            continue  # ParseDict names it
        if field.type in _FLOATS and isinstance(value, bool):
            raise InvalidArgument([FieldViolation(prefix + field.name, f"must be a number, got {json.dumps(value)}")])
        nested = field.message_type
        if nested is not None and not _is_map(field) and not _is_repeated(field) and isinstance(value, dict):
            _check_types(value, nested, f"{prefix}{field.name}.")


_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def _body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument([FieldViolation("body", f"is not JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidArgument([FieldViolation("body", "must be a JSON object")])
    return data


def _put(data: dict[str, Any], descriptor: Descriptor, key: str, value: str) -> None:
    """Set one query parameter in the JSON-shaped `data`: walk dotted names into messages and maps."""
    parts = key.split(".")
    target, message = data, descriptor
    for index, part in enumerate(parts):
        field = _field(message, part, key)
        name = field.json_name
        last = index == len(parts) - 1
        if _is_map(field):
            if index != len(parts) - 2 or _map_value(field).message_type is not None:
                raise InvalidArgument([FieldViolation(key, "a map parameter is NAME.KEY=VALUE with a plain value")])
            target.setdefault(name, {})[parts[-1]] = value
            return
        if last:
            _set_scalar(target, field, name, value, key)
            return
        if field.message_type is None or _is_repeated(field):
            raise InvalidArgument([FieldViolation(key, f"{part} has no fields")])
        target = target.setdefault(name, {})
        message = field.message_type


def _set_scalar(target: dict[str, Any], field: FieldDescriptor, name: str, value: str, key: str) -> None:
    converted: Any = value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value.lower() not in (*_TRUE, *_FALSE):
            raise InvalidArgument([FieldViolation(key, f"must be true or false, got {value!r}")])
        converted = value.lower() in _TRUE
    if _is_repeated(field):
        target.setdefault(name, []).append(converted)
    else:
        target[name] = converted


def _field(message: Descriptor, part: str, key: str) -> FieldDescriptor:
    for field in message.fields:
        if part in (field.name, field.json_name):
            return field
    raise InvalidArgument([FieldViolation(key, f"{message.name} has no field {part!r}")])


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _map_value(field: FieldDescriptor) -> FieldDescriptor:
    entry = field.message_type
    assert entry is not None
    return entry.fields_by_name["value"]


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _field_of(problem: str) -> str:
    """The field a json_format error names: ``Failed to parse webhook field: Failed to parse url
    field: …`` is ``webhook.url``; ``… has no field named "x" …`` is ``x``."""
    unknown = _UNKNOWN_FIELD.search(problem)
    if unknown:
        return unknown.group(1)
    return ".".join(_FAILED_FIELD.findall(problem)) or "body"


_FAILED_FIELD: Final = re.compile(r"Failed to parse (\w+) field")
_UNKNOWN_FIELD: Final = re.compile(r'has no field named "([^"]*)"')


# ----------------------------------------------------------------------------- errors


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_json(status: grpc.Status) -> dict[str, Any]:
    """The ``google.rpc.Status`` a gRPC client reads from the trailer, as JSON."""
    for key, value in status.trailing_metadata or ():
        if key == "grpc-status-details-bin":
            return message_json(status_pb2.Status.FromString(value))
    return {"code": status.code.value[0], "message": status.details, "details": []}
