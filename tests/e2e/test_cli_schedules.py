"""`jobwire schedules ACTION`, run as a user would run it, against the real server."""

from __future__ import annotations

import json
import uuid

from tests.conftest import ServerProcess
from tests.e2e.test_cli_client import run


def _id() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def test_create_get_update_list_pause_resume_delete(server: ServerProcess) -> None:
    name = _id()
    made = run(server, "schedules", "create", name, "noop", "--cron", "30 2 * * *", "--time-zone",
               "America/New_York", "--payload", '{"a": 1}', "--label", "team=data", "--overlap", "skip",
               "--jitter", "5m", "--description", "nightly")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"created {name}: cron 30 2 * * * (America/New_York); next ")

    shown = run(server, "schedules", "get", name)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:5] == [f"id:          {name}", "timing:      cron 30 2 * * * (America/New_York), jitter up to 5m",
                         "state:       active", "overlap:     SKIP", "catch-up:    SKIP"]
    assert "labels:      team=data" in lines and "description: nightly" in lines
    assert sum(1 for line in lines if line.endswith(":30:00Z")) == 5  # the next five firings, 07:30Z

    updated = run(server, "schedules", "update", name, "--every", "1h", "--json")
    assert updated.returncode == 0, updated.stderr
    schedule = json.loads(updated.stdout)
    assert schedule["spec"]["interval"] == 3600.0 and schedule["spec"]["cron"] == ""
    assert schedule["spec"]["labels"] == {"team": "data"} and schedule["spec"]["overlap_policy"] == "SKIP"
    assert schedule["spec"]["jitter"] == 300.0 and schedule["spec"]["payload"] == '{"a": 1}'
    assert len(schedule["next_fire_times"]) == 5

    listed = run(server, "schedules", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("ID ")
    assert any(line.startswith(name) and "every 1h" in line and "active" in line
               for line in listed.stdout.splitlines())

    assert run(server, "schedules", "pause", name).stdout.strip() == f"paused {name}: every 1h; paused"
    assert run(server, "schedules", "resume", name).stdout.startswith(f"resumed {name}: every 1h; next ")
    assert run(server, "schedules", "delete", name).stdout.strip() == f"deleted {name}"
    missing = run(server, "schedules", "get", name)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: schedule {name} not found (NOT_FOUND)"


def test_trigger_watch_runs_the_job(server: ServerProcess) -> None:
    name = _id()
    assert run(server, "schedules", "create", name, "sleep", "--every", "1d", "--payload",
               '{"seconds": 0.1}', "--paused").returncode == 0
    result = run(server, "schedules", "trigger", name, "--watch")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("enqueued ") and lines[0].endswith(f"from schedule {name}")
    job_id = lines[0].split()[1]
    assert lines[-1] == f"job {job_id} SUCCEEDED"
    result = run(server, "schedules", "trigger", name, "--json", "--request-id", "once")
    again = run(server, "schedules", "trigger", name, "--json", "--request-id", "once")
    assert json.loads(result.stdout)["job"]["id"] == json.loads(again.stdout)["job"]["id"]
    assert json.loads(again.stdout)["job"]["labels"] == {"jobwire/schedule": name}


def test_bad_input(server: ServerProcess) -> None:
    result = run(server, "schedules", "create", _id(), "noop", "--cron", "61 * * * *", "--time-zone", "Mars")
    assert result.returncode == 1
    assert result.stderr.startswith("error: spec.cron: '61 * * * *' is not a valid cron expression")
    assert "spec.time_zone: unknown time zone 'Mars'" in result.stderr and "(INVALID_ARGUMENT)" in result.stderr
    result = run(server, "schedules", "create", _id(), "noop", "--every", "soon")
    assert result.returncode == 2 and "not a duration: 'soon'" in result.stderr
    result = run(server, "schedules", "create", _id(), "noop", "--every", "1h", "--cron", "@daily")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    result = run(server, "schedules", "create", _id(), "noop", "--every", "1h", "--overlap", "never")
    assert result.returncode == 2 and "must be one of allow, skip, cancel-previous" in result.stderr
