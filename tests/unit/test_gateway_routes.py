"""The gateway's route table against the proto, its query decoding and its OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jobwire.v1 import jobwire_pb2
from jobwire_server.api.gateway.codec import HTTP_STATUS, decode_request
from jobwire_server.api.gateway.openapi import openapi_document
from jobwire_server.api.gateway.routes import ROUTES, SERVICE, STREAM_ROUTES, aiohttp_path
from jobwire_server.domain.errors import InvalidArgument


def test_every_rpc_of_the_service_has_a_route() -> None:
    unary = {route.rpc for route in ROUTES}
    streams = {route.rpc for route in STREAM_ROUTES}
    for method in SERVICE.methods:
        if method.server_streaming:
            assert method.name in streams, f"{method.name} streams: add it to STREAM_ROUTES (routes.py)"
        else:
            assert method.name in unary, f"{method.name} has no HTTP route: add it to ROUTES (routes.py)"
    assert len(unary) == len(ROUTES) and not unary & streams, "an RPC is routed twice"
    assert (unary | streams) <= set(SERVICE.methods_by_name), "a route names an RPC the service does not have"


def test_routes_are_distinct_and_their_path_fields_exist() -> None:
    seen = set()
    for route in (*ROUTES, *STREAM_ROUTES):
        key = (route.method, route.path)
        assert key not in seen, key
        seen.add(key)
        for name in route.path_fields:
            assert name in route.descriptor.input_type.fields_by_name, (route.rpc, name)
        # The scope the gRPC method needs (admin for the ones METHOD_SCOPES leaves out) applies as is.
        assert route.full_method.startswith("/jobwire.v1.JobService/")


def test_path_fields_stop_at_a_custom_verb() -> None:
    assert aiohttp_path("/v1/jobs/{id}:cancel") == "/v1/jobs/{id:[^/:]+}:cancel"


def test_every_grpc_code_has_an_http_status() -> None:
    import grpc  # noqa: PLC0415

    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT] == 400
    assert HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED] == 401
    assert HTTP_STATUS[grpc.StatusCode.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404


# ----------------------------------------------------------------------------- query and body decoding


def _list(*query: tuple[str, str]) -> Any:
    return decode_request(jobwire_pb2.ListJobsRequest.DESCRIPTOR, None, {}, list(query))


def test_query_parameters_fill_repeated_fields_maps_and_timestamps() -> None:
    request = _list(("states", "JOB_STATE_QUEUED"), ("states", "JOB_STATE_RUNNING"), ("page_size", "7"),
                    ("labels.team", "data"), ("createdAfter", "2026-01-02T03:04:05Z"), ("kind", "noop"))
    assert list(request.states) == [jobwire_pb2.JOB_STATE_QUEUED, jobwire_pb2.JOB_STATE_RUNNING]
    assert request.page_size == 7
    assert dict(request.labels) == {"team": "data"}
    assert request.created_after.seconds == 1767323045
    assert request.kind == "noop"


@pytest.mark.parametrize(("query", "field"), [
    (("pageSize", "seven"), "pageSize"),
    (("states", "JOB_STATE_NOPE"), "states"),
    (("colour", "red"), "colour"),
    (("labelIn.team", "a"), "labelIn.team"),
    (("createdAfter", "yesterday"), "createdAfter"),
])
def test_a_bad_query_parameter_is_a_field_violation(query: tuple[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _list(query)
    assert [v.field for v in info.value.violations] == [field]


def test_booleans_in_the_query_are_checked() -> None:
    request = decode_request(jobwire_pb2.RetryJobRequest.DESCRIPTOR, None, {}, [("fromStart", "true")])
    assert request.from_start is True
    with pytest.raises(InvalidArgument, match="true or false"):
        decode_request(jobwire_pb2.RetryJobRequest.DESCRIPTOR, None, {}, [("fromStart", "yes please")])


def test_the_path_wins_over_the_body() -> None:
    request = decode_request(jobwire_pb2.CancelJobRequest.DESCRIPTOR, b'{"id": "other", "reason": "r"}',
                             {"id": "from-path"}, [])
    assert (request.id, request.reason) == ("from-path", "r")


@pytest.mark.parametrize(("body", "field"), [(b"[1]", "body"), (b"{", "body"), (b'{"priority": "high"}', "priority"),
                                             (b'{"webhook": {"url": 3}}', "webhook.url"), (b'{"nope": 1}', "nope")])
def test_a_bad_body_is_a_field_violation(body: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_request(jobwire_pb2.EnqueueRequest.DESCRIPTOR, body, {}, [])
    assert [v.field for v in info.value.violations] == [field]


# ----------------------------------------------------------------------------- OpenAPI


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_the_openapi_document_has_every_route_and_resolves() -> None:
    document = openapi_document()
    json.dumps(document)  # plain JSON
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operations == {route.rpc for route in (*ROUTES, *STREAM_ROUTES)}
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    job = schemas["Job"]["properties"]
    assert job["state"] == {"nullable": True, "allOf": [{"$ref": "#/components/schemas/JobState"}]}
    assert job["createTime"] == {"type": "string", "format": "date-time", "nullable": True}
    assert schemas["JobEvent"]["properties"]["sequence"]["type"] == "string"  # uint64 in proto3 JSON
    listing = {p["name"] for p in document["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert {"queue", "kind", "states", "pageSize", "pageToken"} <= listing


def test_a_path_field_repeated_in_the_body_must_be_a_string_and_numbers_are_not_booleans() -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_request(jobwire_pb2.PauseQueueRequest.DESCRIPTOR, b'{"name": {}}', {"name": "media"}, [])
    assert [v.field for v in info.value.violations] == ["name"]
    with pytest.raises(InvalidArgument) as info:
        decode_request(jobwire_pb2.UpdateQueueRequest.DESCRIPTOR, b'{"rateLimit": false}', {"name": "media"}, [])
    assert [v.field for v in info.value.violations] == ["rate_limit"]
    request = decode_request(jobwire_pb2.UpdateQueueRequest.DESCRIPTOR, b'{"name": null, "rateLimit": 0}',
                             {"name": "media"}, [])
    assert request.name == "media" and request.HasField("rate_limit") and request.rate_limit == 0
