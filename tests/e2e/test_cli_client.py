"""The `jobwire` command's client commands, run as a user would run them, against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, StartServer
from tests.integration.test_sdk_auth import READER, WRITER, write_tokens_file

TIMEOUT = 60.0


def _jobwire() -> str:
    beside = Path(sys.executable).parent / "jobwire"
    found = str(beside) if beside.exists() else shutil.which("jobwire")
    if found is None:
        pytest.fail("the jobwire command is not installed: `make install` puts it beside the tests' Python")
    return found


def run(server: ServerProcess, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBWIRE_TARGET": server.target}
    env.pop("JOBWIRE_TOKEN", None)
    if token is not None:
        env["JOBWIRE_TOKEN"] = token
    return subprocess.run([_jobwire(), *args], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False)


def test_enqueue_watch_succeeds(server: ServerProcess) -> None:
    result = run(server, "enqueue", "sleep", "--payload", '{"seconds":0.2,"phases":2}', "--watch")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("enqueued ")
    job_id = lines[0].split()[1]
    assert lines[-1].startswith(f"job {job_id} SUCCEEDED")
    assert any("PHASE_STARTED" in line for line in lines)


def test_enqueue_watch_json_lines(server: ServerProcess) -> None:
    result = run(server, "enqueue", "sleep", "--payload", '{"seconds":0.2,"phases":2}', "--watch", "--json")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert objects[0]["deduplicated"] is False
    job_id = objects[0]["job"]["id"]
    events = objects[1:]
    assert events[0]["type"] == "SNAPSHOT"
    assert events[-1]["type"] == "SUCCEEDED" and events[-1]["job"]["state"] == "SUCCEEDED"
    assert all(e["job_id"] == job_id for e in events)

    got = run(server, "get", job_id, "--json")
    assert got.returncode == 0, got.stderr
    job = json.loads(got.stdout)
    assert job["state"] == "SUCCEEDED" and len(job["phases"]) == 2
    assert json.loads(job["payload"]) == {"seconds": 0.2, "phases": 2}


def test_watch_of_a_failing_job_exits_1(server: ServerProcess) -> None:
    result = run(server, "enqueue", "sleep", "--payload", '{"phases": "many"}', "--watch")
    assert result.returncode == 1, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("job ") and " FAILED: " in last  # the final line names the error


def test_list_stats_cancel_retry_json(server: ServerProcess) -> None:
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    enqueued = run(server, "enqueue", "noop", "--queue", queue, "--delay", "3600", "--label", "suite=e2e", "--json")
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = json.loads(enqueued.stdout)["job"]["id"]

    listed = run(server, "list", "--queue", queue, "--state", "scheduled", "--label", "suite=e2e", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [job_id]

    stats = run(server, "stats", "--queue", queue, "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["scheduled"] == 1

    cancelled = run(server, "cancel", job_id, "--reason", "e2e", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "CANCELLED"

    watched = run(server, "watch", job_id)
    assert watched.returncode == 2, watched.stderr
    assert watched.stdout.strip().splitlines()[-1].startswith(f"job {job_id} CANCELLED")

    retried = run(server, "retry", job_id, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["state"] == "QUEUED"
    assert run(server, "watch", job_id, "--json").returncode == 0


def test_human_output_and_errors(server: ServerProcess) -> None:
    missing = run(server, "get", str(uuid.uuid4()))
    assert missing.returncode != 0
    assert missing.stderr.startswith("error: ") and missing.stderr.rstrip().endswith("(NOT_FOUND)")
    assert len(missing.stderr.strip().splitlines()) == 1

    bad = run(server, "enqueue", "not a kind!")
    assert bad.returncode != 0 and "(INVALID_ARGUMENT)" in bad.stderr

    unreachable = subprocess.run(
        [_jobwire(), "stats", "--target", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert unreachable.returncode != 0 and "(UNAVAILABLE)" in unreachable.stderr

    assert run(server, "list").returncode == 0
    assert run(server, "stats").returncode == 0
    helped = run(server, "enqueue", "--help")
    assert helped.returncode == 0 and "--payload" in helped.stdout


def test_token_from_env_or_flag(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(tokens_file=write_tokens_file(tmp_path))
    denied = run(server, "stats")
    assert denied.returncode != 0 and "(UNAUTHENTICATED)" in denied.stderr
    read_only = run(server, "enqueue", "noop", token=READER)
    assert read_only.returncode != 0 and "(PERMISSION_DENIED)" in read_only.stderr
    done = run(server, "enqueue", "noop", "--payload", '{"a":1}', "--watch", "--token", WRITER)
    assert done.returncode == 0, done.stderr
    assert run(server, "list", "--json", token=READER).returncode == 0


def test_events_tail_json_until_ctrl_c(server: ServerProcess) -> None:
    queue = f"tail-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "JOBWIRE_TARGET": server.target}
    tail = subprocess.Popen(
        [_jobwire(), "events", "--json", "--queue", queue, "--type", "SUCCEEDED"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # The job runs about a second, far longer than the tail needs to subscribe.
        enqueued = run(server, "enqueue", "sleep", "--queue", queue, "--payload", '{"seconds":1,"phases":1}', "--json")
        job_id = json.loads(enqueued.stdout)["job"]["id"]
        assert tail.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(tail.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=TIMEOUT), "no event within the timeout"
        event = json.loads(tail.stdout.readline())
        assert event["job_id"] == job_id and event["type"] == "SUCCEEDED"
    finally:
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=TIMEOUT)
    assert tail.returncode == 0, err
    assert "Traceback" not in err


async def test_webhooks_and_prune_commands(start_server: StartServer) -> None:
    from jobwire.v1 import jobwire_pb2 as pb  # noqa: PLC0415

    from tests.integration.test_webhooks import connect, next_outcome, webhook_outcomes  # noqa: PLC0415
    from tests.receiver import Answer, Receiver  # noqa: PLC0415

    server = start_server(webhook_allow="127.0.0.1/32", webhook_retry_schedule="0.01s",
                          stale_after="0.000001", retention_interval="1h")
    async with Receiver() as receiver, connect(server) as stub, webhook_outcomes(stub) as outcomes:
        receiver.answer(Answer(503, body=b"busy"))
        enqueued = await asyncio.to_thread(run, server, "enqueue", "noop", "--payload", "{}", "--json",
                                           "--webhook", receiver.url("/hook?key=secret"))
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = json.loads(enqueued.stdout)["job"]["id"]
        assert (await next_outcome(outcomes, job_id)).type == pb.EVENT_TYPE_WEBHOOK_DELIVERED

    shown = run(server, "webhooks", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "SUCCEEDED #" in shown.stdout and "DELIVERED" in shown.stdout and "attempts: 2" in shown.stdout
    assert "503" in shown.stdout and "200" in shown.stdout and "secret" not in shown.stdout
    as_json = [json.loads(line) for line in run(server, "webhooks", job_id, "--json").stdout.splitlines()]
    assert [a["status_code"] for a in as_json[0]["attempt_log"]] == [503, 200]

    dry = run(server, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would make ") and "STALE" in dry.stdout
    done = json.loads(run(server, "prune", "--json").stdout)
    assert done["marked_stale"] >= 1 and done["dry_run"] is False
    assert json.loads(run(server, "get", job_id, "--json").stdout)["state"] == "STALE"
    missing = run(server, "webhooks", "01a00000-0000-7000-8000-000000000000")
    assert missing.returncode != 0 and "not found" in missing.stderr.lower()


def test_retry_gives_a_fresh_attempt_budget(server: ServerProcess) -> None:
    failing = run(server, "enqueue", "sleep", "--payload", '{"phases": "many"}', "--watch")  # fails at once
    assert failing.returncode == 1, failing.stderr
    job_id = failing.stdout.split()[1]
    for made in (1, 2):
        retried = run(server, "retry", job_id)
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.strip() == (f"retrying {job_id} [QUEUED] with a fresh budget of 3 attempts "
                                          f"({made} made before)")
        assert run(server, "watch", job_id).returncode == 1
    shown = run(server, "get", job_id)
    assert "attempt:    1 of 3 (3 in all)" in shown.stdout.splitlines()
    listed = run(server, "list", "--json")
    (job,) = [json.loads(line) for line in listed.stdout.splitlines() if json.loads(line)["id"] == job_id]
    assert (job["attempt"], job["counted_attempts"], job["max_attempts"]) == (3, 1, 3)


def test_cancel_and_retry_every_job_matching_filters(server: ServerProcess) -> None:
    queue = f"media-{uuid.uuid4().hex[:8]}"
    ids = []
    for env in ("prod", "prod", "staging"):
        enqueued = run(server, "enqueue", "noop", "--queue", queue, "--delay", "3600", "--label", f"env={env}",
                       "--json")
        assert enqueued.returncode == 0, enqueued.stderr
        ids.append(json.loads(enqueued.stdout)["job"]["id"])

    dry = run(server, "cancel", "--state", "SCHEDULED", "--queue", queue, "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (0, "3 jobs match; nothing changed (dry run)"), dry.stderr
    cancelled = run(server, "cancel", "--state", "SCHEDULED", "--queue", queue, "--label-in", "env=prod",
                    "--reason", "media freeze")
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancelled 2 of 2 matching jobs"), cancelled.stderr
    again = run(server, "cancel", "--queue", queue, "--json")
    assert json.loads(again.stdout) == {"matched": 3, "changed": 1, "cancel_requested": 0,
                                        "skipped": {"ALREADY_CANCELLED": 2}, "dry_run": False}
    got = json.loads(run(server, "get", ids[0], "--json").stdout)
    assert (got["state"], got["cancel_reason"]) == ("CANCELLED", "media freeze")

    listed = run(server, "list", "--queue", queue, "--label-key", "env", "--finished-after", "1h", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == list(reversed(ids))
    assert run(server, "list", "--queue", queue, "--finished-before", "2000-01-01", "--json").stdout == ""

    retried = run(server, "retry", "--state", "CANCELLED", "--queue", queue, "--label", "env=staging")
    assert (retried.returncode, retried.stdout.strip()) == (0, "retried 1 of 1 matching jobs"), retried.stderr
    assert json.loads(run(server, "get", ids[2], "--json").stdout)["state"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    skipped = run(server, "retry", "--queue", queue, "--label-key", "env")
    assert skipped.returncode == 0 and "skipped" in skipped.stdout, skipped.stdout


def test_cancel_names_one_job_or_filters(server: ServerProcess) -> None:
    nothing = run(server, "cancel")
    assert nothing.returncode == 2 and "give a job ID, or filters" in nothing.stderr
    both = run(server, "retry", str(uuid.uuid4()), "--state", "FAILED")
    assert both.returncode == 2 and "not both" in both.stderr
    bad_time = run(server, "list", "--finished-after", "last tuesday")
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr
    everything = run(server, "retry", "--all", "--dry-run", "--json")
    assert everything.returncode == 0 and json.loads(everything.stdout)["dry_run"] is True


def test_bulk_cancel_of_more_than_one_job_needs_admin(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(tokens_file=write_tokens_file(tmp_path))
    for _ in range(2):
        assert run(server, "enqueue", "noop", "--queue", "pair", "--delay", "3600", token=WRITER).returncode == 0
    denied = run(server, "cancel", "--queue", "pair", token=WRITER)
    assert denied.returncode == 1
    assert denied.stderr.strip() == ("error: token 'writer' lacks scope 'admin' needed for CancelJobs on more than "
                                     "one job (PERMISSION_DENIED)")
    assert run(server, "cancel", "--queue", "pair", "--dry-run", token=WRITER).returncode == 0
