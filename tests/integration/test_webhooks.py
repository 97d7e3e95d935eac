"""Webhooks against a real `jobwire serve` and a real HTTP receiver on loopback: signatures a
`standardwebhooks` receiver verifies, retries with one webhook-id, 410, redirects, the address
guard at enqueue and at delivery, and delivery after the server is killed mid-delivery."""

from __future__ import annotations

import asyncio
import base64
import signal
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


async def settled_outcome(stub: Stub, outcomes: asyncio.Queue[pb.JobEvent], job_id: str) -> pb.JobEvent:
    """The event that ended the job's one delivery: stored already, or still to come (`outcomes`
    was subscribed before the delivery's state is read, so it cannot be missed in between)."""
    (delivery,) = await deliveries(stub, job_id)
    if delivery.state == D.WEBHOOK_DELIVERY_STATE_PENDING:
        return await next_outcome(outcomes, job_id)
    async with asyncio.timeout(20):
        stored = [e async for e in stub.WatchJob(pb.WatchJobRequest(id=job_id, after_sequence=1))]
    return next(e for e in stored if e.type in WEBHOOK_EVENTS)


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


# ----------------------------------------------------------------------------- retries, 410, redirects


async def test_retries_on_500_429_and_timeout_with_one_webhook_id(start_server: StartServer) -> None:
    server = serve(start_server, webhook_retry_schedule=FAST, webhook_timeout="0.5s")
    async with Receiver() as receiver, connect(server) as stub, webhook_outcomes(stub) as outcomes:
        receiver.answer(Answer(500), Answer(429, headers={"Retry-After": "1"}), Answer(hold=True), Answer(200))
        job = await enqueue(stub, receiver.url())
        outcome = await next_outcome(outcomes, job.id)
        requests = await receiver.wait_for(4)
        (delivery,) = await deliveries(stub, job.id)

    assert outcome.type == T.EVENT_TYPE_WEBHOOK_DELIVERED
    assert "attempt 4" in outcome.detail
    assert len({r.headers["webhook-id"] for r in requests}) == 1, "retries keep the delivery's webhook-id"
    assert requests[2].time - requests[1].time >= 1.0, "Retry-After: 1 is honoured over the 50 ms schedule"
    assert delivery.state == D.WEBHOOK_DELIVERY_STATE_DELIVERED and delivery.attempts == 4
    log = [(a.number, a.status_code) for a in delivery.attempt_log]
    assert log == [(1, 500), (2, 429), (3, 0), (4, 200)]
    assert "timed out" in delivery.attempt_log[2].error
    for request in requests:
        Webhook(SECRET_A).verify(request.body, request.headers)


async def test_retries_run_out_into_webhook_failed(start_server: StartServer) -> None:
    server = serve(start_server, webhook_retry_schedule="0.01s,0.01s")
    async with Receiver() as receiver, connect(server) as stub, webhook_outcomes(stub) as outcomes:
        receiver.answer(Answer(503), Answer(502), Answer(500, body=b"x" * 100_000))
        job = await enqueue(stub, receiver.url())
        outcome = await next_outcome(outcomes, job.id)
        (delivery,) = await deliveries(stub, job.id)
    assert outcome.type == T.EVENT_TYPE_WEBHOOK_FAILED
    assert "after 3 attempt(s)" in outcome.detail and "HTTP 500" in outcome.detail
    assert delivery.state == D.WEBHOOK_DELIVERY_STATE_FAILED
    assert [a.status_code for a in delivery.attempt_log] == [503, 502, 500]
    assert len(delivery.attempt_log[2].response) == 1024, "the logged answer is truncated"


async def test_410_gone_stops_every_delivery_to_that_url_for_the_job(start_server: StartServer) -> None:
    server = serve(start_server, handlers="tests.testkit")
    async with Gate() as gate, Receiver() as receiver, connect(server) as stub, webhook_outcomes(stub) as outcomes:
        receiver.answer(Answer(410))
        job = await enqueue(stub, receiver.url(), kind="tk.gate", payload=gate.payload(),
                            events=[T.EVENT_TYPE_STARTED, T.EVENT_TYPE_SUCCEEDED])
        call = await gate.next()
        outcome = await next_outcome(outcomes, job.id)
        assert outcome.type == T.EVENT_TYPE_WEBHOOK_FAILED and "410" in outcome.detail
        call.release()
        await until_event(stub, job.id, T.EVENT_TYPE_SUCCEEDED)
        started, succeeded = await deliveries(stub, job.id)
    assert len(receiver.requests) == 1
    assert started.state == D.WEBHOOK_DELIVERY_STATE_FAILED and started.attempt_log[0].status_code == 410
    assert succeeded.state == D.WEBHOOK_DELIVERY_STATE_STOPPED and succeeded.attempts == 0


async def test_redirects_are_not_followed(start_server: StartServer) -> None:
    server = serve(start_server)
    async with Receiver() as receiver, connect(server) as stub, webhook_outcomes(stub) as outcomes:
        receiver.answer(Answer(307, headers={"Location": receiver.url("/elsewhere")}))
        job = await enqueue(stub, receiver.url())
        outcome = await next_outcome(outcomes, job.id)
    assert [r.path for r in receiver.requests] == ["/hook"]
    assert outcome.type == T.EVENT_TYPE_WEBHOOK_FAILED
    assert "307" in outcome.detail and "redirects are not followed" in outcome.detail


# ----------------------------------------------------------------------------- the address guard

REFUSED_URLS = {
    "http://127.0.0.1:9/hook": "loopback",
    "http://localhost:9/hook": "loopback",
    "http://10.1.2.3/hook": "private",
    "http://192.168.0.10/hook": "private",
    "http://169.254.169.254/latest/meta-data": "link-local",
    "http://[::1]/hook": "loopback",
    "http://[::ffff:127.0.0.1]/hook": "IPv4-mapped",
    "http://0.0.0.0/hook": "unspecified",
    "http://224.0.0.1/hook": "multicast",
    "ftp://example.com/hook": "http or https",
}


async def test_non_public_webhook_urls_are_refused_at_enqueue(start_server: StartServer) -> None:
    server = start_server()
    async with connect(server) as stub:
        for url, reason in REFUSED_URLS.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await enqueue(stub, url)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            _, fields = error_details(caught.value)
            assert reason in fields["webhook.url"], (url, fields)
        batch = pb.EnqueueBatchRequest(requests=[
            pb.EnqueueRequest(kind="noop"),
            pb.EnqueueRequest(kind="noop", webhook=pb.WebhookConfig(url="http://10.0.0.1/x"))])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EnqueueBatch(batch, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "requests[1].webhook.url" in error_details(caught.value)[1]
        listed = await stub.ListJobs(pb.ListJobsRequest(), timeout=10)
        assert not listed.jobs, "a refused enqueue creates nothing"


async def test_address_is_checked_again_at_delivery(start_server: StartServer) -> None:
    """Allowed when the job was enqueued, refused when it is delivered (here: the allow-list
    changed across a restart; in life, a DNS answer that changed)."""
    first = serve(start_server)
    async with Receiver() as receiver:
        receiver.answer(Answer(hold=True))
        async with connect(first) as stub:
            job = await enqueue(stub, receiver.url())
            await receiver.wait_for(1)
        first.stop(signal.SIGKILL)
        second = start_server(db=first.db_path)  # no allow-list: loopback is refused
        async with connect(second) as stub, webhook_outcomes(stub) as outcomes:
            outcome = await settled_outcome(stub, outcomes, job.id)
            (delivery,) = await deliveries(stub, job.id)
    assert len(receiver.requests) == 1, "the refused attempt never connected"
    assert outcome.type == T.EVENT_TYPE_WEBHOOK_FAILED and "loopback" in outcome.detail
    assert delivery.state == D.WEBHOOK_DELIVERY_STATE_FAILED
    assert delivery.attempt_log[-1].error.startswith("refused")


# ----------------------------------------------------------------------------- crashes


async def test_delivery_survives_sigkill_between_completion_and_delivery(start_server: StartServer) -> None:
    first = serve(start_server)
    async with Receiver() as receiver:
        receiver.answer(Answer(hold=True))  # the first attempt never gets its answer
        async with connect(first) as stub:
            job = await enqueue(stub, receiver.url())
            (held,) = await receiver.wait_for(1)
            assert (await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)).state == pb.JOB_STATE_SUCCEEDED
        first.stop(signal.SIGKILL)

        second = serve(start_server, db=first.db_path)
        async with connect(second) as stub, webhook_outcomes(stub) as outcomes:
            requests = await receiver.wait_for(2)
            outcome = await settled_outcome(stub, outcomes, job.id)
    assert outcome.type == T.EVENT_TYPE_WEBHOOK_DELIVERED
    assert requests[1].headers["webhook-id"] == held.headers["webhook-id"], "the receiver can deduplicate"
    assert requests[1].json()["data"]["jobId"] == job.id
