"""The OpenAPI 3 document of the gateway, built from the proto descriptors and the route table at
start, so it cannot drift from what the gateway serves. Schemas follow the proto3 JSON mapping:
64-bit integers are strings, enums their value names, Timestamps RFC 3339 strings, Durations
``"1.5s"``, bytes base64."""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from jobwire_server.api.gateway.routes import ROUTES, STREAM_ROUTES, Route, StreamRoute

__all__ = ["openapi_document"]

Schema = dict[str, Any]
_REF: Final = "#/components/schemas/"
_INT64: Final = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
                           FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})
_INT32: Final = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
                           FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32})
_UNSIGNED: Final = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32,
                              FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})
#: Well-known types that the JSON mapping writes as one string.
_WELL_KNOWN: Final[dict[str, Schema]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
}
_STATUS: Final[Schema] = {
    "type": "object",
    "description": "google.rpc.Status: the same code, message and details a gRPC client receives.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}},
                                               "required": ["@type"]}},
    },
    "required": ["code", "message"],
}


def openapi_document(version: str = "v1") -> dict[str, Any]:
    """The whole document (a plain dict, ready for JSON)."""
    schemas: dict[str, Schema] = {"Status": _STATUS}
    paths: dict[str, dict[str, Any]] = {}
    for route in (*ROUTES, *STREAM_ROUTES):
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.0.3",
        "info": {"title": "jobwire", "version": version,
                 "description": "jobwire.v1.JobService over HTTP/JSON (proto3 JSON mapping) and Server-Sent Events."},
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items())),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        # A token when the server has a tokens file; none on a server without one.
        "security": [{"bearer": []}, {}],
    }


def _operation(route: Route, schemas: dict[str, Schema]) -> dict[str, Any]:
    method = route.descriptor
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                  for name in route.path_fields]
    operation: dict[str, Any] = {"operationId": route.rpc, "tags": [method.containing_service.name],
                                 "parameters": parameters}
    if route.body:
        operation["requestBody"] = {"required": False, "content": {
            "application/json": {"schema": _message_ref(method.input_type, schemas)}}}
    else:
        parameters += _query_parameters(method.input_type, set(route.path_fields), schemas)
    error = {"description": "An error: the gRPC call's status.",
             "content": {"application/json": {"schema": {"$ref": _REF + "Status"}}}}
    if isinstance(route, StreamRoute):
        operation["responses"] = _stream_responses(route, method.output_type, schemas, error)
    else:
        operation["responses"] = {"200": {"description": "OK", "content": {
            "application/json": {"schema": _message_ref(method.output_type, schemas)}}}, "default": error}
    return operation


def _stream_responses(route: StreamRoute, output: Descriptor, schemas: dict[str, Schema],
                      error: dict[str, Any]) -> dict[str, Any]:
    _message_ref(output, schemas)  # the events' schema, for readers of the document
    text = (f"Server-Sent Events; each `data` is a {output.name} (JSON). "
            + ("`id` is the job's sequence: send it back as `Last-Event-ID` to resume. " if route.resume else "")
            + "Ends with `event: end`, or `event: status` (a Status) when the server ends it.")
    responses: dict[str, Any] = {"200": {"description": text, "content": {"text/event-stream": {
        "schema": {"type": "string"}}}}, "default": error}
    if route.resume:
        responses["204"] = {"description": "Nothing left to send after Last-Event-ID: the stream had ended."}
    return responses


def _query_parameters(message: Descriptor, taken: set[str], schemas: dict[str, Schema]) -> list[dict[str, Any]]:
    """Query parameters: the request's plain fields (maps and nested messages are not in the query)."""
    found: list[dict[str, Any]] = []
    for field in message.fields:
        if field.name in taken or _is_map(field):
            continue
        if field.message_type is not None and field.message_type.full_name not in _WELL_KNOWN:
            continue
        schema = _field_schema(field, schemas)
        parameter: dict[str, Any] = {"name": field.json_name, "in": "query", "required": False, "schema": schema}
        if field.is_repeated:
            parameter.update(style="form", explode=True)
        found.append(parameter)
    return found


def _message_ref(message: Descriptor, schemas: dict[str, Schema]) -> Schema:
    if message.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[message.full_name])
    name = message.full_name.removeprefix("jobwire.v1.")
    if name not in schemas:
        schemas[name] = {}  # placed first: a message may refer to itself
        schemas[name] = {"type": "object", "properties": {
            field.json_name: _nullable(_field_schema(field, schemas)) for field in message.fields}}
    return {"$ref": _REF + name}


def _nullable(schema: Schema) -> Schema:
    """The JSON mapping reads ``null`` as a field's default value (answers never hold one)."""
    if "$ref" in schema:
        return {"nullable": True, "allOf": [schema]}
    return {**schema, "nullable": True}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Schema]) -> Schema:
    if _is_map(field):
        entry = field.message_type
        assert entry is not None
        value = entry.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas)}
    single = _single_schema(field, schemas)
    return {"type": "array", "items": single} if field.is_repeated else single


def _single_schema(field: FieldDescriptor, schemas: dict[str, Schema]) -> Schema:
    kind = field.type
    if field.message_type is not None:
        return _message_ref(field.message_type, schemas)
    if field.enum_type is not None:
        return _enum_schema(field.enum_type, schemas)
    if kind in _INT64:
        return {"type": "string", "format": "int64",
                "pattern": "^[0-9]{1,19}$" if kind in _UNSIGNED else "^-?[0-9]{1,18}$"}
    if kind in _INT32:
        return {"type": "integer", "format": "int32", **({"minimum": 0} if kind in _UNSIGNED else {})}
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


def _enum_schema(enum: EnumDescriptor, schemas: dict[str, Schema]) -> Schema:
    name = enum.full_name.removeprefix("jobwire.v1.")
    schemas.setdefault(name, {"type": "string", "enum": [value.name for value in enum.values]})
    return {"$ref": _REF + name}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry
