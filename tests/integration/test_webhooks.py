"""Webhooks against a real `jobwire serve` and a real HTTP receiver on loopback: signatures a
`standardwebhooks` receiver verifies, retries with one webhook-id, 410, redirects, the address
guard at enqueue and at delivery, and delivery after the server is killed mid-delivery."""

from __future__ import annotations

import asyncio
import base64
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from jobwire.v1 import jobwire_pb2 as pb
from jobwire.v1 import jobwire_pb2_grpc
from standardwebhooks.webhooks import Webhook

from tests.conftest import ServerProcess, StartServer
from tests.receiver import Answer, Receiver
from tests.testkit import Gate, error_details, until_event

pytestmark = pytest.mark.timeout(60)

T = pb.EventType
D = pb.WebhookDeliveryState
Stub = jobwire_pb2_grpc.JobServiceStub
SECRET_A = "whsec_" + base64.b64encode(b"first secret of thirty-two bytes").decode()
SECRET_B = "whsec_" + base64.b64encode(b"second secret, rotated in nicely").decode()
WEBHOOK_EVENTS = [T.EVENT_TYPE_WEBHOOK_DELIVERED, T.EVENT_TYPE_WEBHOOK_FAILED]
FAST = "0.05s,0.05s,0.05s,0.05s"


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield jobwire_pb2_grpc.JobServiceStub(channel)


def serve(start_server: StartServer, **flags: Any) -> ServerProcess:
    return start_server(webhook_allow="127.0.0.1/32", webhook_secret=SECRET_A, **flags)


async def enqueue(stub: Stub, url: str, kind: str = "noop", payload: bytes = b"{}",
                  events: list[int] | None = None) -> pb.Job:
    request = pb.EnqueueRequest(kind=kind, payload=payload, webhook=pb.WebhookConfig(url=url, events=events or []))
    return (await stub.Enqueue(request, timeout=10)).job


@asynccontextmanager
async def webhook_outcomes(stub: Stub) -> AsyncIterator[asyncio.Queue[pb.JobEvent]]:
    """Every WEBHOOK_DELIVERED / WEBHOOK_FAILED event published while the block runs."""
    queue: asyncio.Queue[pb.JobEvent] = asyncio.Queue()
    call = stub.WatchEvents(pb.WatchEventsRequest(types=[*WEBHOOK_EVENTS, T.EVENT_TYPE_ENQUEUED]))

    async def pump() -> None:
        async for event in call:
            queue.put_nowait(event)

    task = asyncio.create_task(pump())
    # The stream is live once an event has crossed it: enqueue probe jobs until one's arrives.
    async with asyncio.timeout(10):
        while True:
            probe = (await stub.Enqueue(pb.EnqueueRequest(kind="noop"), timeout=10)).job
            try:
                await next_event(queue, probe.id, T.EVENT_TYPE_ENQUEUED, within=0.5)
                break
            except TimeoutError:
                continue
    try:
        yield queue
    finally:
        call.cancel()
        task.cancel()


async def next_event(queue: asyncio.Queue[pb.JobEvent], job_id: str, *types: int, within: float = 20.0
                     ) -> pb.JobEvent:
    async with asyncio.timeout(within):
        while True:
            event = await queue.get()
            if event.job_id == job_id and event.type in types:
                return event


async def next_outcome(queue: asyncio.Queue[pb.JobEvent], job_id: str, within: float = 20.0) -> pb.JobEvent:
    return await next_event(queue, job_id, *WEBHOOK_EVENTS, within=within)


async def deliveries(stub: Stub, job_id: str) -> list[pb.WebhookDelivery]:
    reply = await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(job_id=job_id), timeout=10)
    return list(reply.deliveries)


# ----------------------------------------------------------------------------- delivery and signing


async def test_delivery_is_signed_for_standardwebhooks_and_follows_the_terminal_event(
        start_server: StartServer) -> None:
    server = start_server(webhook_allow="127.0.0.1/32", webhook_secret=[SECRET_A, SECRET_B])
    async with Receiver() as receiver, connect(server) as stub, webhook_outcomes(stub) as outcomes:
        job = await enqueue(stub, receiver.url("/hook?token=s3cret"))
        outcome = await next_outcome(outcomes, job.id)
        (request,) = await receiver.wait_for(1)

    # Either secret verifies while both are configured (rotation).
    for secret in (SECRET_A, SECRET_B):
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["jobId"] == job.id
        assert payload["data"]["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["Content-Type"] == "application/json"
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"some other secret entirely, no!!").decode()).verify(
            request.body, request.headers)

    assert outcome.type == T.EVENT_TYPE_WEBHOOK_DELIVERED
    assert outcome.job.state == pb.JOB_STATE_SUCCEEDED
    async with connect(server) as stub:
        succeeded = await until_event(stub, job.id, T.EVENT_TYPE_SUCCEEDED)
        assert succeeded.sequence < outcome.sequence, "SUCCEEDED is emitted before WEBHOOK_DELIVERED"
        (delivery,) = await deliveries(stub, job.id)
    assert delivery.id == request.headers["webhook-id"]
    assert delivery.state == D.WEBHOOK_DELIVERY_STATE_DELIVERED
    assert delivery.event_type == T.EVENT_TYPE_SUCCEEDED
    assert delivery.url == receiver.url("/hook"), "the query string (it may hold a secret) is not shown"
    (attempt,) = delivery.attempt_log
    assert (attempt.number, attempt.status_code, attempt.error, attempt.response) == (1, 200, "", "ok")
