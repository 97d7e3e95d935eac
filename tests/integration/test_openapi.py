"""The gateway's OpenAPI document, fuzzed against a live server with schemathesis: whatever it sends
within (and outside) the document's schemas, the server answers without a 5xx, with a status code,
content type and body the document declares. Bounded (a few examples per operation) to stay quick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jobwire_server.api.gateway.openapi import openapi_document
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ServerProcess, free_port
from tests.testkit import running

# The document as the gateway builds it (the test below checks that the server serves this one).
schema = schemathesis.openapi.from_dict(openapi_document()).exclude(
    # Streams never end on their own (the firehose) or end only with the job: tests/integration/test_gateway.py.
    operation_id=["WatchJob", "WatchEvents"])
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    port = free_port()
    directory: Path = tmp_path_factory.mktemp("openapi")
    with running(directory, http_listen=f"127.0.0.1:{port}") as server:
        yield server, f"http://127.0.0.1:{port}"


def test_the_server_serves_the_document_it_builds(http_server: tuple[ServerProcess, str]) -> None:
    import json  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(http_server[1] + "/v1/openapi.json", timeout=10) as reply:
        assert json.load(reply) == openapi_document()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_keeps_to_its_document(case: schemathesis.Case, http_server: tuple[ServerProcess, str]) -> None:
    case.call_and_validate(base_url=http_server[1], checks=CHECKS, timeout=10)
