"""The console in a real browser against a real server: find a job, watch its progress bars advance to
SUCCEEDED live, cancel a running job, retry a failed one, page through 200 jobs, use it with a token,
and load it with 10,000 jobs in the database; pause and resume a queue, and see a job wait for it."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jobwire_server.api.auth import hash_token
from playwright.sync_api import Page, expect

from tests.browser.conftest import shoot
from tests.conftest import StartServer
from tests.httpkit import HttpServer, start_http

WAIT = 20_000  # ms: generous bounds for a loaded machine; each wait ends as soon as its condition holds


def api(server: HttpServer, method: str, path: str, body: Any = None, token: str = "") -> Any:
    request = urllib.request.Request(server.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


def enqueue(server: HttpServer, kind: str, payload: Any = None, **fields: Any) -> dict[str, Any]:
    body = {"kind": kind, **fields}
    if payload is not None:
        body["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return api(server, "POST", "/v1/jobs", body)["job"]  # type: ignore[no-any-return]


@pytest.fixture
def server(start_server: StartServer) -> HttpServer:
    return start_http(start_server)


def test_find_a_job_and_watch_its_progress_bars_advance_live(server: HttpServer, page: Page) -> None:
    enqueue(server, "noop", labels={"team": "other"})
    job = enqueue(server, "sleep", {"seconds": 6, "phases": 2}, labels={"team": "reports"})
    page.goto(server.base + "/")
    expect(page.get_by_role("heading", name="Queues")).to_be_visible()
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_label("Label").fill("team=reports")
    page.get_by_role("button", name="Apply filters").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1, timeout=WAIT)
    page.get_by_role("link", name=job["id"]).click()
    expect(page.get_by_role("heading", name=re.compile(job["id"]))).to_be_visible()
    page.evaluate("window.sameDocument = true")  # gone if anything below reloads the page
    # A bar part way: the page shows progress as it is reported, not only at the end.
    page.wait_for_function("() => [...document.querySelectorAll('progress[data-phase]')]"
                           ".some(bar => bar.value > 0 && bar.value < 100)", timeout=WAIT)
    shoot(page, "job-running")
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED", timeout=WAIT)
    for bar in page.locator("progress[data-phase]").all():
        expect(bar).to_have_attribute("value", "100")
    expect(page.get_by_label("step-2 result")).to_have_text("step-2")
    assert page.evaluate("window.sameDocument") is True
    expect(page.locator(".timeline")).to_contain_text("SUCCEEDED")


def test_cancel_a_running_job(server: HttpServer, page: Page) -> None:
    job = enqueue(server, "sleep", {"seconds": 600, "phases": 1})
    page.goto(f"{server.base}/#/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("RUNNING", timeout=WAIT)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-state .badge")).to_have_text("CANCELLED", timeout=WAIT)
    expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
    expect(page.locator(".timeline")).to_contain_text("CANCELLED")
    assert api(server, "GET", f"/v1/jobs/{job['id']}")["state"] == "JOB_STATE_CANCELLED"


def test_retry_a_failed_job(server: HttpServer, page: Page) -> None:
    job = enqueue(server, "sleep", {"seconds": -1})  # a malformed payload fails for good
    page.goto(f"{server.base}/#/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("FAILED", timeout=WAIT)
    expect(page.get_by_role("table", name=re.compile("Every failure"))).to_contain_text("seconds must be")
    page.get_by_role("button", name="Retry job").press("Enter")  # by keyboard
    # The retry runs again (and fails again: its payload has not changed), seen live on the page.
    expect(page.get_by_role("table", name=re.compile("Every failure")).locator("tbody tr")).to_have_count(2,
                                                                                                       timeout=WAIT)
    expect(page.locator("#job-state")).to_have_text("FAILED")
    stored = api(server, "GET", f"/v1/jobs/{job['id']}")
    assert len(stored["errorHistory"]) == 2


def test_page_through_200_jobs(server: HttpServer, page: Page) -> None:
    for _ in range(2):
        api(server, "POST", "/v1/jobs:batchEnqueue", {"requests": [{"kind": "noop", "queue": "paging"}] * 100})
    page.goto(f"{server.base}/#/jobs?queue=paging&pageSize=50")
    seen: list[list[str]] = []
    for number in range(4):
        links = page.locator("tbody tr td:first-child a")
        expect(links).to_have_count(50, timeout=WAIT)
        seen.append(links.all_inner_texts())
        if number < 3:
            page.get_by_role("button", name="Next page").click()
            expect(links.first).not_to_have_text(seen[-1][0], timeout=WAIT)
    shoot(page, "jobs-last-page")
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    assert len({job for page_ids in seen for job in page_ids}) == 200
    page.get_by_role("button", name="Previous page").click()
    expect(page.locator("tbody tr td:first-child a").first).to_have_text(seen[2][0], timeout=WAIT)


def test_works_with_a_token_kept_for_the_tab(start_server: StartServer, tmp_path: Path, page: Page) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\nname = "ops"\nsha256 = "{hash_token("ops-secret")}"\nscopes = ["admin"]\n')
    server = start_http(start_server, tokens_file=tokens)
    job = enqueue_with_token(server, "ops-secret")
    page.goto(server.base + "/")
    dialog = page.get_by_role("dialog", name="Bearer token")
    expect(dialog).to_be_visible(timeout=WAIT)
    dialog.get_by_label("Token").fill("ops-secret")
    dialog.get_by_label("Token").press("Enter")
    expect(page.get_by_role("table", name=re.compile("Jobs per state"))).to_be_visible(timeout=WAIT)
    assert page.evaluate("sessionStorage.getItem('jobwire.token')") == "ops-secret"
    page.goto(f"{server.base}/#/jobs/{job['id']}")  # a new page load: the token is still there
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED", timeout=WAIT)


def enqueue_with_token(server: HttpServer, token: str) -> dict[str, Any]:
    return api(server, "POST", "/v1/jobs", {"kind": "noop"}, token=token)["job"]  # type: ignore[no-any-return]


def test_schedules_page_pauses_and_resumes(server: HttpServer, page: Page) -> None:
    api(server, "POST", "/v1/schedules", {"id": "nightly", "spec": {"template": {"kind": "noop"}, "cron": "0 3 * * *"}})
    page.goto(f"{server.base}/#/schedules")
    row = page.get_by_role("row", name=re.compile("nightly"))
    expect(row).to_contain_text("active", timeout=WAIT)
    page.get_by_role("button", name="Pause nightly").click()
    expect(row).to_contain_text("paused", timeout=WAIT)
    assert api(server, "GET", "/v1/schedules/nightly")["paused"] is True
    page.get_by_role("button", name="Resume nightly").click()
    expect(row).to_contain_text("active", timeout=WAIT)


def test_loads_with_10000_jobs_and_on_a_phone(server: HttpServer, page: Page) -> None:
    for _ in range(10):  # scheduled far ahead: they wait in the database and nothing runs them
        api(server, "POST", "/v1/jobs:batchEnqueue",
            {"requests": [{"kind": "noop", "runAt": "2999-01-01T00:00:00Z"}] * 1000})
    page.goto(server.base + "/")
    table = page.get_by_role("table", name=re.compile("Jobs per state"))
    expect(table.get_by_role("row", name=re.compile("default"))).to_contain_text("10000", timeout=WAIT)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.base}/#/jobs")
    expect(page.locator("tbody tr")).to_have_count(50, timeout=WAIT)
    shoot(page, "jobs-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the job list is {width}px wide on a 390px screen"


def test_queues_page_pauses_and_resumes_a_queue(server: HttpServer, page: Page) -> None:
    enqueue(server, "noop", queue="media")  # the queue holds a job: it is listed
    page.goto(server.base + "/")
    row = page.get_by_role("table", name=re.compile("Jobs per state")).get_by_role("row", name=re.compile("media"))
    expect(row).to_contain_text("active", timeout=WAIT)
    page.get_by_role("button", name="Pause queue media").press("Enter")  # by keyboard
    expect(row).to_contain_text("paused", timeout=WAIT)
    resume = page.get_by_role("button", name="Resume queue media")
    expect(resume).to_be_focused()  # the redrawn table keeps the keyboard user's place
    assert api(server, "GET", "/v1/queues/media")["settings"]["paused"] is True
    # A job enqueued to the paused queue waits, and its page says why.
    job = enqueue(server, "noop", queue="media")
    page.get_by_role("link", name="media", exact=True).click()
    page.get_by_role("link", name=job["id"]).click()
    expect(page.locator("#job-state")).to_have_text("QUEUED", timeout=WAIT)
    expect(page.locator("#job-waiting")).to_contain_text("its queue is paused", timeout=WAIT)
    expect(page.locator("#job-waiting")).to_contain_text("QUEUE_PAUSED")
    shoot(page, "job-waiting-paused-queue")
    stored = api(server, "GET", f"/v1/jobs/{job['id']}")
    assert (stored["state"], stored["waitingReason"]) == ("JOB_STATE_QUEUED", "WAITING_REASON_QUEUE_PAUSED")
    page.get_by_role("link", name="Queues", exact=True).click()
    expect(row).to_contain_text("paused", timeout=WAIT)
    shoot(page, "queues-paused")
    resume.click()
    expect(row).to_contain_text("active", timeout=WAIT)
    expect(page.get_by_role("button", name="Pause queue media")).to_be_visible()
    # Back on the job's page: it ran once the queue was resumed, and no longer shows a waiting reason.
    page.go_back()
    expect(page.get_by_role("heading", name=re.compile(job["id"]))).to_be_visible(timeout=WAIT)
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED", timeout=WAIT)
    expect(page.locator("#job-waiting")).to_have_count(0)
    assert api(server, "GET", "/v1/queues/media")["settings"]["paused"] is False


def test_queues_page_shows_limits_and_a_refused_pause(start_server: StartServer, tmp_path: Path, page: Page) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\nname = "ops"\nsha256 = "{hash_token("ops-secret")}"\nscopes = ["admin"]\n'
                      f'[[token]]\nname = "viewer"\nsha256 = "{hash_token("viewer-secret")}"\n'
                      'scopes = ["jobs:read", "jobs:write"]\n')
    server = start_http(start_server, tokens_file=tokens)
    api(server, "PATCH", "/v1/queues/media", {"concurrencyLimit": 3, "rateLimit": 2.5, "rateBurst": 5, "keyLimit": 1},
        token="ops-secret")  # settings and no job: listed all the same
    page.goto(server.base + "/")
    dialog = page.get_by_role("dialog", name="Bearer token")
    expect(dialog).to_be_visible(timeout=WAIT)
    dialog.get_by_label("Token").fill("viewer-secret")
    dialog.get_by_label("Token").press("Enter")
    row = page.get_by_role("table", name=re.compile("Jobs per state")).get_by_role("row", name=re.compile("media"))
    expect(row).to_contain_text("concurrency 3", timeout=WAIT)
    expect(row).to_contain_text("rate 2.5/s, burst 5")
    expect(row).to_contain_text("key limit 1")
    expect(row).to_contain_text("active")
    page.get_by_role("button", name="Pause queue media").click()
    expect(page.get_by_role("alert")).to_contain_text("lacks scope 'queues:write'", timeout=WAIT)
    shoot(page, "queues-pause-refused")
    expect(row).to_contain_text("active")
    assert api(server, "GET", "/v1/queues/media", token="ops-secret")["settings"]["paused"] is False
