"""The test side of the HTTP gateway: a server with it on, and a Server-Sent Events reader."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.conftest import ServerProcess, StartServer, free_port


@dataclass
class HttpServer:
    """A `jobwire serve` process with its gateway at `base` (``http://127.0.0.1:PORT``)."""

    process: ServerProcess
    base: str

    @property
    def target(self) -> str:
        return self.process.target


def start_http(start_server: StartServer, **flags: object) -> HttpServer:
    port = free_port()
    server = start_server(http_listen=f"127.0.0.1:{port}", **flags)
    return HttpServer(server, f"http://127.0.0.1:{port}")


@dataclass
class SseEvent:
    """One Server-Sent Event: `event` is "message" unless named; `data` is parsed JSON."""

    event: str = "message"
    id: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream response, in order, until it ends. Comment lines (heartbeats)
    come as events of type "comment"."""
    current = SseEvent()
    data: list[str] = []
    while True:
        raw = await response.content.readline()
        if not raw:
            if current.comments:
                yield SseEvent(event="comment", comments=current.comments)
            return
        line = raw.decode().rstrip("\n")
        if line == "":
            if data:
                current.data = json.loads("\n".join(data))
                yield current
            elif current.comments:
                yield SseEvent(event="comment", comments=current.comments)
            current, data = SseEvent(), []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            current.comments.append(value)
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            data.append(value)


def error_reason(body: dict[str, Any]) -> str:
    """The ErrorInfo reason of a google.rpc.Status in JSON."""
    for detail in body.get("details", []):
        if detail["@type"].endswith("google.rpc.ErrorInfo"):
            return str(detail["reason"])
    raise AssertionError(f"no ErrorInfo in {body}")


def field_violations(body: dict[str, Any]) -> dict[str, str]:
    for detail in body.get("details", []):
        if detail["@type"].endswith("google.rpc.BadRequest"):
            return {v["field"]: v["description"] for v in detail["fieldViolations"]}
    return {}
