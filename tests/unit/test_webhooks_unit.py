"""The pure parts of webhooks: the address guard's rules, the verdict of an attempt and its retry
time, the body receivers get, and signatures a `standardwebhooks` receiver accepts."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace

import pytest
from jobwire_server.domain.deliveries import Delivery, Verdict, deliveries_for, strip_query, webhook_body
from jobwire_server.domain.models import Event, Job, Webhook
from jobwire_server.domain.states import EventType, JobState
from jobwire_server.engine.webhooks.guard import AddressGuard, AddressRefused
from jobwire_server.engine.webhooks.http import HttpResult
from jobwire_server.engine.webhooks.sender import judge
from jobwire_server.engine.webhooks.signing import Signer, check_secret
from standardwebhooks.webhooks import Webhook as Verifier

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
DELIVERY = Delivery("msg_1", "job-1", 7, "SUCCEEDED", "https://hooks.example.com/in?k=v", b"{}", 0, 100.0)
SCHEDULE = (5.0, 60.0)


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"), ("172.16.5.4", "private"),
    ("192.168.1.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "IPv4-mapped"), ("::ffff:8.8.8.8", "IPv4-mapped"), ("100.64.0.1", "not a public"),
    ("fc00::1", "private"),
])
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    with pytest.raises(AddressRefused, match=reason):
        AddressGuard().check_addresses("host", [address])


def test_public_addresses_pass_and_every_answer_counts() -> None:
    guard = AddressGuard()
    assert guard.check_addresses("host", ["8.8.8.8", "2606:4700::1111"]) == ("8.8.8.8", "2606:4700::1111")
    with pytest.raises(AddressRefused, match=r"10\.0\.0\.2"):
        guard.check_addresses("host", ["8.8.8.8", "10.0.0.2"])  # one private answer is enough to refuse


def test_allow_list_by_cidr_and_by_host_name() -> None:
    guard = AddressGuard(["10.0.0.0/8", "hooks.internal"])
    assert guard.check_addresses("a", ["10.1.2.3"]) == ("10.1.2.3",)
    with pytest.raises(AddressRefused):
        guard.check_addresses("a", ["192.168.0.1"])
    assert guard.check_addresses("hooks.internal", ["192.168.0.1"]) == ("192.168.0.1",)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost", "http://[::1"])
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(AddressRefused):
        AddressGuard().parse(url)


async def test_literal_addresses_are_checked_without_dns() -> None:
    with pytest.raises(AddressRefused, match="loopback"):
        await AddressGuard().target("http://[::1]:8080/x")
    target = await AddressGuard(["127.0.0.1/32"]).target("http://127.0.0.1:8080/x")
    assert (target.port, target.addresses) == (8080, ("127.0.0.1",))


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (204, Verdict.DELIVERED), (500, Verdict.RETRY), (503, Verdict.RETRY),
    (429, Verdict.RETRY), (410, Verdict.GONE), (301, Verdict.FAILED), (307, Verdict.FAILED),
    (400, Verdict.FAILED), (404, Verdict.FAILED),
])
def test_verdict_by_status(status: int, verdict: Verdict) -> None:
    assert judge(DELIVERY, HttpResult(status=status), 1000.0, SCHEDULE).verdict is verdict


def test_network_errors_retry_and_refusals_do_not() -> None:
    assert judge(DELIVERY, HttpResult(error="timed out"), 0.0, SCHEDULE).verdict is Verdict.RETRY
    assert judge(DELIVERY, HttpResult(error="refused: x", refused=True), 0.0, SCHEDULE).verdict is Verdict.FAILED


def test_retry_time_follows_the_schedule_with_jitter_and_retry_after() -> None:
    first = judge(DELIVERY, HttpResult(status=500), 1000.0, SCHEDULE)
    assert 1000.0 + 4.5 <= first.next_at <= 1000.0 + 5.5
    second = judge(_attempted(1), HttpResult(status=500), 1000.0, SCHEDULE)
    assert 1000.0 + 54 <= second.next_at <= 1000.0 + 66
    asked = judge(DELIVERY, HttpResult(status=429, retry_after=120.0), 1000.0, SCHEDULE)
    assert asked.next_at >= 1120.0
    out_of_schedule = judge(_attempted(2), HttpResult(status=500), 1000.0, SCHEDULE)
    assert out_of_schedule.verdict is Verdict.FAILED and out_of_schedule.record.number == 3


def _attempted(attempts: int) -> Delivery:
    d = DELIVERY
    return Delivery(d.id, d.job_id, d.event_seq, d.event_type, d.url, d.body, attempts, d.create_time)


def test_logged_url_drops_query_and_credentials() -> None:
    assert strip_query("https://user:pw@hooks.example.com:8443/in?k=v#f") == "https://hooks.example.com:8443/in"
    assert judge(DELIVERY, HttpResult(status=200), 0.0, SCHEDULE).record.url == "https://hooks.example.com/in"


def _job(**changes: object) -> Job:
    base = Job(id="job-1", queue="q", kind="k", payload=b"", priority=5, state=JobState.SUCCEEDED, max_attempts=3,
               phases=(), create_time=1.0, update_time=2.0, run_at=1.0, finish_time=2.0,
               webhook=Webhook("https://h.example.com/", (EventType.SUCCEEDED,)))
    return replace(base, **changes)  # type: ignore[arg-type]


def test_only_events_the_webhook_asks_for_go_to_the_outbox() -> None:
    job = _job()
    wanted = Event(job.id, 4, EventType.SUCCEEDED, 2.0, job.queue, job.kind, job=job)
    other = Event(job.id, 3, EventType.STARTED, 1.5, job.queue, job.kind, job=job)
    new = deliveries_for(wanted)
    assert new is not None and new.id.startswith("msg_") and new.event_seq == 4
    assert deliveries_for(other) is None
    assert deliveries_for(Event(job.id, 4, EventType.SUCCEEDED, 2.0, "q", "k", job=_job(webhook=None))) is None


def test_body_has_the_standard_webhooks_shape() -> None:
    job = _job()
    body = json.loads(webhook_body(Event(job.id, 4, EventType.SUCCEEDED, 2.0, "q", "k", job=job), job))
    assert body["type"] == "job.succeeded" and body["timestamp"] == "1970-01-01T00:00:02.000Z"
    assert body["data"]["jobId"] == "job-1" and body["data"]["sequence"] == 4
    assert body["data"]["job"]["state"] == "JOB_STATE_SUCCEEDED"


def test_signatures_verify_with_the_reference_library() -> None:
    other = "whsec_" + base64.b64encode(b"another secret, thirty-two bytes").decode()
    body = b'{"type":"job.succeeded"}'
    headers = Signer([SECRET, other]).headers("msg_abc", body, now=time.time())
    assert Verifier(SECRET).verify(body, headers) == {"type": "job.succeeded"}
    assert Verifier(other).verify(body, headers) == {"type": "job.succeeded"}
    assert headers["webhook-id"] == "msg_abc"


@pytest.mark.parametrize(("secret", "problem"), [("abc", "whsec_"), ("whsec_!!!", "base64"), (SECRET, None)])
def test_secret_check(secret: str, problem: str | None) -> None:
    found = check_secret(secret)
    assert (found is None) if problem is None else (problem in (found or ""))
