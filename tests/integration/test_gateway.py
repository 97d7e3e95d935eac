"""The HTTP gateway over real HTTP: every route, errors as google.rpc.Status JSON with the HTTP status of
their code, bearer tokens and scopes, Server-Sent Events (resume with Last-Event-ID, the firehose,
heartbeats, a slow reader), the console's files and /metrics on the same port."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jobwire_server.api.auth import hash_token
from jobwire_server.api.gateway.routes import ROUTES

from tests.conftest import REPO, StartServer, free_port
from tests.httpkit import HttpServer, SseEvent, error_reason, field_violations, sse_events, start_http
from tests.testkit import Gate

TIMEOUT = aiohttp.ClientTimeout(total=30)
MISSING_JOB = "01a205ce-80e1-70f5-ad86-4a0062fd01dd"


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.b64encode(raw).decode()


class Api:
    """JSON calls to one gateway; remembers which routes were used."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str = "") -> None:
        self.session, self.base = session, base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.used: set[tuple[str, str]] = set()

    async def call(self, method: str, path: str, body: Any = None, *, expect: int = 200,
                   route: str = "", **params: Any) -> Any:
        self.used.add((method, route or path))
        async with self.session.request(method, self.base + path, json=body, params=params or None,
                                        headers=self.headers) as response:
            data = await response.json()
            assert response.status == expect, (response.status, data)
            assert response.content_type == "application/json"
            return data

    async def enqueue(self, kind: str, payload: Any = b"", **fields: Any) -> dict[str, Any]:
        body = {"kind": kind, "payload": b64(payload), **fields}
        return (await self.call("POST", "/v1/jobs", body))["job"]  # type: ignore[no-any-return]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def gateway(start_server: StartServer) -> HttpServer:
    return start_http(start_server, handlers="tests.testkit")


async def finished(api: Api, job_id: str) -> dict[str, Any]:
    """The job once its stream has ended (the last event's job)."""
    events = await stream(api, f"/v1/jobs/{job_id}/events")
    assert events[-1].event == "end"
    return events[-2].data["job"]  # type: ignore[no-any-return]


async def stream(api: Api, path: str, headers: dict[str, str] | None = None, limit: int = 10_000,
                 **params: Any) -> list[SseEvent]:
    """The events of one SSE stream, until it ends or `limit` events came."""
    found: list[SseEvent] = []
    async with api.session.get(api.base + path, headers={**api.headers, **(headers or {})},
                               params=params or None) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        async for event in sse_events(response):
            if event.event == "comment":  # a heartbeat
                continue
            found.append(event)
            if len(found) >= limit:
                break
    return found


# ----------------------------------------------------------------------------- every route


async def test_every_unary_route_answers_json(gateway: HttpServer, session: aiohttp.ClientSession) -> None:
    api = Api(session, gateway.base)
    job = await api.enqueue("noop", {"hello": "world"}, labels={"team": "data"}, queue="reports")
    assert job["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
    done = await finished(api, job["id"])
    assert done["state"] == "JOB_STATE_SUCCEEDED"
    assert base64.b64decode(done["phases"][0]["result"]) == b'{"hello": "world"}'

    batch = await api.call("POST", "/v1/jobs:batchEnqueue", {"requests": [
        {"kind": "noop", "runAt": "2999-01-01T00:00:00Z"}, {"kind": "noop", "delay": "3600s"}]})
    waiting = [r["job"]["id"] for r in batch["responses"]]
    assert [r["job"]["state"] for r in batch["responses"]] == ["JOB_STATE_SCHEDULED"] * 2

    got = await api.call("GET", f"/v1/jobs/{job['id']}", route="/v1/jobs/{id}")
    assert got["labels"] == {"team": "data"}
    listed = await api.call("GET", "/v1/jobs", queue="reports", states="JOB_STATE_SUCCEEDED")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert (await api.call("GET", "/v1/jobs", **{"labels.team": "data"}))["jobs"][0]["id"] == job["id"]

    cancelled = await api.call("POST", f"/v1/jobs/{waiting[0]}:cancel", {"reason": "not needed"},
                               route="/v1/jobs/{id}:cancel")
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    retried = await api.call("POST", f"/v1/jobs/{waiting[0]}:retry", {"fromStart": True}, route="/v1/jobs/{id}:retry")
    assert retried["state"] == "JOB_STATE_QUEUED"
    assert (await finished(api, waiting[0]))["state"] == "JOB_STATE_SUCCEEDED"

    preview = await api.call("POST", "/v1/jobs:cancel", {"filter": {"states": ["JOB_STATE_SCHEDULED"]}, "dryRun": True})
    assert preview["matched"] == "1" and preview["dryRun"] is True
    preview = await api.call("POST", "/v1/jobs:retry", {"filter": {"states": ["JOB_STATE_FAILED"]}, "dryRun": True})
    assert preview["matched"] == "0"

    stats = {q["queue"]: q for q in (await api.call("GET", "/v1/queues/stats"))["queues"]}
    assert stats["reports"]["succeeded"] == "1" and stats["default"]["scheduled"] == "1"
    deliveries = await api.call("GET", f"/v1/jobs/{job['id']}/webhookDeliveries",
                                route="/v1/jobs/{job_id}/webhookDeliveries")
    assert deliveries == {"deliveries": []}
    assert (await api.call("POST", "/v1/jobs:prune", {"dryRun": True}))["dryRun"] is True

    await _every_schedule_route(api)
    await _every_queue_route(api)
    assert api.used == {(r.method, r.path) for r in ROUTES}, "a route of routes.py is not exercised here"


async def _every_schedule_route(api: Api) -> None:
    spec = {"template": {"kind": "noop"}, "interval": "3600s", "description": "hourly"}
    created = await api.call("POST", "/v1/schedules", {"id": "hourly", "spec": spec})
    assert created["id"] == "hourly" and created["paused"] is False
    got = await api.call("GET", "/v1/schedules/hourly", route="/v1/schedules/{id}")
    assert got["spec"]["description"] == "hourly"
    assert [s["id"] for s in (await api.call("GET", "/v1/schedules"))["schedules"]] == ["hourly"]
    updated = await api.call("PATCH", "/v1/schedules/hourly", {"spec": {**spec, "description": "renamed"}},
                             route="/v1/schedules/{id}")
    assert updated["spec"]["description"] == "renamed"
    paused = await api.call("POST", "/v1/schedules/hourly:pause", route="/v1/schedules/{id}:pause")
    assert paused["paused"] is True
    resumed = await api.call("POST", "/v1/schedules/hourly:resume", {}, route="/v1/schedules/{id}:resume")
    assert resumed["paused"] is False
    fired = await api.call("POST", "/v1/schedules/hourly:trigger", {"requestId": "t-1"},
                           route="/v1/schedules/{id}:trigger")
    assert fired["job"]["kind"] == "noop"
    assert await api.call("DELETE", "/v1/schedules/hourly", route="/v1/schedules/{id}") == {}
    error = await api.call("GET", "/v1/schedules/hourly", expect=404, route="/v1/schedules/{id}")
    assert error_reason(error) == "SCHEDULE_NOT_FOUND"


async def _every_queue_route(api: Api) -> None:
    paused = await api.call("POST", "/v1/queues/media:pause", route="/v1/queues/{name}:pause")
    assert paused["name"] == "media" and paused["settings"]["paused"] is True
    updated = await api.call("PATCH", "/v1/queues/media", {"rateLimit": 50, "rateBurst": 10, "keyLimit": 1},
                             route="/v1/queues/{name}")
    assert (updated["settings"]["rateLimit"], updated["settings"]["rateBurst"]) == (50, 10)
    cleared = await api.call("PATCH", "/v1/queues/media", {"rateLimit": 0}, route="/v1/queues/{name}")
    assert cleared["settings"]["rateLimit"] == 0 and cleared["settings"]["keyLimit"] == 1, "0 is sent and written"
    got = await api.call("GET", "/v1/queues/media", route="/v1/queues/{name}")
    assert got["settings"] == cleared["settings"]
    assert "media" in [q["name"] for q in (await api.call("GET", "/v1/queues"))["queues"]]
    resumed = await api.call("POST", "/v1/queues/media:resume", {}, route="/v1/queues/{name}:resume")
    assert resumed["settings"]["paused"] is False
    error = await api.call("PATCH", "/v1/queues/media", {"rateLimit": -1}, expect=400, route="/v1/queues/{name}")
    assert error_reason(error) == "INVALID_ARGUMENT"
    missing = await api.call("GET", "/v1/queues/nobody", expect=404, route="/v1/queues/{name}")
    assert error_reason(missing) == "QUEUE_NOT_FOUND"


# ----------------------------------------------------------------------------- errors


async def test_errors_are_statuses_with_the_grpc_details(gateway: HttpServer, session: aiohttp.ClientSession) -> None:
    api = Api(session, gateway.base)
    bad = await api.call("POST", "/v1/jobs", {"kind": "no-such-kind", "priority": 11}, expect=400)
    assert bad["code"] == 3  # INVALID_ARGUMENT
    assert set(field_violations(bad)) == {"kind", "priority"}
    bad = await api.call("POST", "/v1/jobs", {"kind": "noop", "priority": "high"}, expect=400)
    assert "priority" in field_violations(bad)
    bad = await api.call("GET", "/v1/jobs", expect=400, pageSize="-1")
    assert "page_size" in field_violations(bad)
    missing = await api.call("GET", f"/v1/jobs/{MISSING_JOB}", expect=404)
    assert (missing["code"], error_reason(missing)) == (5, "JOB_NOT_FOUND")
    job = await api.enqueue("noop", delay="3600s")
    refused = await api.call("POST", f"/v1/jobs/{job['id']}:retry", expect=400)  # FAILED_PRECONDITION
    assert (refused["code"], error_reason(refused)) == (9, "INVALID_TRANSITION")
    await api.call("POST", "/v1/schedules", {"id": "s", "spec": {"template": {"kind": "noop"}, "interval": "60s"}})
    exists = await api.call("POST", "/v1/schedules", {"id": "s", "spec": {"template": {"kind": "noop"},
                                                                          "interval": "60s"}}, expect=409)
    assert exists["code"] == 6  # ALREADY_EXISTS
    unknown = await api.call("GET", "/v1/nothing-here", expect=404)
    assert unknown["code"] == 5
    async with session.delete(gateway.base + "/v1/jobs") as response:
        assert response.status == 405
        assert (await response.json())["code"] == 12  # UNIMPLEMENTED


TOKENS = {"reader": ("read-secret", ["jobs:read"]), "writer": ("write-secret", ["jobs:write"]),
          "root": ("admin-secret", ["admin"])}


@pytest.fixture
def token_gateway(start_server: StartServer, tmp_path: Path) -> HttpServer:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("".join(f'[[token]]\nname = "{name}"\nsha256 = "{hash_token(secret)}"\nscopes = {scopes!r}\n'
                              .replace("'", '"') for name, (secret, scopes) in TOKENS.items()))
    return start_http(start_server, tokens_file=tokens)


async def test_tokens_and_scopes_as_for_grpc(token_gateway: HttpServer, session: aiohttp.ClientSession) -> None:
    anonymous, reader = Api(session, token_gateway.base), Api(session, token_gateway.base, "read-secret")
    writer, root = Api(session, token_gateway.base, "write-secret"), Api(session, token_gateway.base, "admin-secret")
    refused = await anonymous.call("GET", "/v1/jobs", expect=401)
    assert (refused["code"], error_reason(refused)) == (16, "UNAUTHENTICATED")
    await Api(session, token_gateway.base, "wrong-secret").call("GET", "/v1/jobs", expect=401)
    job = await writer.enqueue("noop")
    denied = await reader.call("POST", "/v1/jobs", {"kind": "noop"}, expect=403)
    assert (denied["code"], error_reason(denied)) == (7, "PERMISSION_DENIED")
    assert "jobs:write" in denied["message"]
    await writer.call("GET", f"/v1/jobs/{job['id']}", expect=403)
    assert (await reader.call("GET", f"/v1/jobs/{job['id']}"))["id"] == job["id"]
    await writer.enqueue("noop")
    # Acting on more than one job needs admin, checked by the servicer itself as for gRPC.
    bulk = await writer.call("POST", "/v1/jobs:cancel", {"filter": {"kind": "noop"}}, expect=403)
    assert "admin" in bulk["message"]
    assert (await root.call("POST", "/v1/jobs:prune", {"dryRun": True}))["dryRun"] is True
    async with session.get(token_gateway.base + f"/v1/jobs/{job['id']}/events") as response:
        assert response.status == 401  # a stream is refused before it starts
    assert (await stream(reader, f"/v1/jobs/{job['id']}/events"))[-1].event == "end"
    async with session.get(token_gateway.base + "/v1/openapi.json") as response:
        assert response.status == 200  # the document and the console's files need no token


def test_refuses_a_public_http_address_without_tokens(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--http-listen", f"0.0.0.0:{free_port()}", "--db", str(tmp_path / "j.db")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:" in result.stderr and "without authentication" in result.stderr


def test_http_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{free_port()}",
             "--http-listen", taken, "--db", str(tmp_path / "j.db")],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith(f"jobwire: error: cannot listen on {taken} for HTTP:") and "port in use" in line


# ----------------------------------------------------------------------------- Server-Sent Events


async def test_a_job_stream_resumes_after_last_event_id_without_gaps(gateway: HttpServer,
                                                                     session: aiohttp.ClientSession) -> None:
    api = Api(session, gateway.base)
    async with Gate() as gate:
        job = await api.enqueue("tk.three", gate.payload())
        first = await gate.next()
        opening = await stream(api, f"/v1/jobs/{job['id']}/events", limit=1)
        assert opening[0].data["type"] == "EVENT_TYPE_SNAPSHOT"
        assert opening[0].id == opening[0].data["sequence"]
        seen = int(opening[0].id or 0)
        first.release()
        (await gate.next()).release()
        (await gate.next()).release()
        rest = await stream(api, f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(seen)})
    assert rest[-1].event == "end"
    sequences = [int(e.id or 0) for e in rest[:-1]]
    assert sequences == list(range(seen + 1, seen + 1 + len(sequences))), "a gap or a repeat in the replay"
    assert rest[-2].data["type"] == "EVENT_TYPE_SUCCEEDED"
    async with session.get(f"{gateway.base}/v1/jobs/{job['id']}/events",
                           headers={"Last-Event-ID": str(sequences[-1])}) as response:
        assert response.status == 204  # nothing after the end: EventSource stops reconnecting
    missing = await api.call("GET", f"/v1/jobs/{MISSING_JOB}/events", expect=404, route="events")
    assert error_reason(missing) == "JOB_NOT_FOUND"


async def test_the_firehose_filters_by_queue(gateway: HttpServer, session: aiohttp.ClientSession) -> None:
    api = Api(session, gateway.base)
    async with api.session.get(gateway.base + "/v1/events", params={"queue": "media"}) as response:
        assert response.status == 200
        events = sse_events(response)
        await api.enqueue("noop")  # queue "default": not for this stream
        media = await api.enqueue("noop", queue="media")
        seen: list[SseEvent] = []
        async with asyncio.timeout(20):
            async for event in events:
                if event.event == "comment":
                    continue
                seen.append(event)
                if event.data["type"] == "EVENT_TYPE_SUCCEEDED":
                    break
    assert {e.data["jobId"] for e in seen} == {media["id"]}
    assert all(e.id is None for e in seen), "firehose events carry no resume id"
    assert seen[0].data["type"] == "EVENT_TYPE_ENQUEUED"


async def test_an_idle_stream_gets_heartbeats(start_server: StartServer, session: aiohttp.ClientSession) -> None:
    server = start_http(start_server, handlers="tests.testkit", http_heartbeat="50ms")
    api = Api(session, server.base)
    async with Gate() as gate:
        job = await api.enqueue("tk.gate", gate.payload())
        call = await gate.next()
        async with session.get(f"{server.base}/v1/jobs/{job['id']}/events") as response:
            events = sse_events(response)
            assert (await anext(events)).data["type"] == "EVENT_TYPE_SNAPSHOT"
            beat = await anext(events)  # the gate holds the phase: nothing happens but heartbeats
            assert (beat.event, beat.comments) == ("comment", ["heartbeat"])
            call.release()
            rest = [event async for event in events if event.event != "comment"]
    assert rest[-2].data["type"] == "EVENT_TYPE_SUCCEEDED"
    assert rest[-1].event == "end"


async def test_a_slow_reader_is_ended_with_a_resume_point(start_server: StartServer,
                                                          session: aiohttp.ClientSession) -> None:
    server = start_http(start_server, watch_buffer=4)
    api = Api(session, server.base)
    job = await api.enqueue("sleep", {"seconds": 0, "phases": 100})
    host, port = server.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/jobs/{job['id']}/events HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    # Do not read until the job is done: the hub's buffer for this stream overflows meanwhile.
    await finished(api, job["id"])
    async with asyncio.timeout(30):
        raw = (await reader.read()).decode()
    writer.close()
    blocks = [b for b in raw.split("\r\n\r\n", 1)[1].split("\n\n") if "data:" in b]
    last = blocks[-1]
    assert "event: status" in last, last[:300]
    status = json.loads(last.split("data: ", 1)[1])
    assert status["code"] == 8 and error_reason(status) == "WATCH_TOO_SLOW"
    resume_after = status["details"][0]["metadata"]["last_sequence"]
    ids = [int(b.split("id: ", 1)[1].split("\n", 1)[0]) for b in blocks if b.startswith("id: ")]
    assert str(ids[-1]) == resume_after
    rest = await stream(api, f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": resume_after})
    resumed = [int(e.id or 0) for e in rest[:-1]]
    assert resumed[0] == int(resume_after) + 1
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    assert rest[-2].data["type"] == "EVENT_TYPE_SUCCEEDED"


# ----------------------------------------------------------------------------- same port: console, metrics


async def test_console_openapi_and_metrics_share_the_port(start_server: StartServer,
                                                          session: aiohttp.ClientSession) -> None:
    server = start_http(start_server, metrics_listen=f"127.0.0.1:{free_port()}")
    async with session.get(server.base + "/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert "<title>jobwire" in await response.text()
    async with session.get(server.base + "/v1/openapi.json") as response:
        document = await response.json()
        assert document["openapi"].startswith("3.") and "/v1/jobs/{id}:cancel" in document["paths"]
    await Api(session, server.base).enqueue("noop")
    async with session.get(server.base + "/metrics") as response:
        assert response.status == 200
        assert "jobwire_jobs_enqueued_total" in await response.text()


async def test_streams_count_against_the_stream_limit_and_free_their_slot(start_server: StartServer,
                                                                         session: aiohttp.ClientSession) -> None:
    server = start_http(start_server, max_watch_streams=1)
    async with session.get(server.base + "/v1/events") as first:
        assert first.status == 200
        async with session.get(server.base + "/v1/events") as second:
            assert second.status == 429
            assert error_reason(await second.json()) == "TOO_MANY_STREAMS"
    # The first client has gone: its slot frees once the server sees the connection close.
    async with asyncio.timeout(20):
        while True:
            async with session.get(server.base + "/v1/events") as third:
                if third.status == 200:
                    break
                assert third.status == 429
            await asyncio.sleep(0.05)  # sleep-ok: polling for the server to notice a closed connection


async def test_a_stream_open_at_shutdown_ends_with_a_resume_point(start_server: StartServer,
                                                                  session: aiohttp.ClientSession) -> None:
    server = start_http(start_server, handlers="tests.testkit", shutdown_grace=1, cancel_grace=0.2)
    api = Api(session, server.base)
    async with Gate() as gate:
        job = await api.enqueue("tk.gate", gate.payload())
        await gate.next()
        async with session.get(f"{server.base}/v1/jobs/{job['id']}/events") as response:
            events = sse_events(response)
            snapshot = await anext(events)
            server.process.process.send_signal(signal.SIGTERM)
            rest = [event async for event in events if event.event != "comment"]
    assert rest[-1].event == "status"
    status = rest[-1].data
    assert (status["code"], error_reason(status)) == (14, "SHUTTING_DOWN")  # UNAVAILABLE
    last = int(status["details"][0]["metadata"]["last_sequence"])
    assert last == int((rest[-2] if len(rest) > 1 else snapshot).id or 0)
    assert server.process.process.wait(30) == 0


async def test_an_enqueue_keeps_the_callers_traceparent(gateway: HttpServer, session: aiohttp.ClientSession) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with session.post(gateway.base + "/v1/jobs", json={"kind": "noop"}, headers={"traceparent": parent}) as reply:
        job = (await reply.json())["job"]
    assert job["traceParent"] == parent
