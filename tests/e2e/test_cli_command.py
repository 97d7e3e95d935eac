"""The installed `jobwire` script itself: version, health, handler modules from the current directory,
and what Ctrl-C during a watch says."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

from jobwire.sync import Client

from tests.conftest import ServerProcess, free_port, wait_serving

TIMEOUT = 60.0
JOBWIRE = str(Path(sys.executable).parent / "jobwire")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JOBWIRE_TARGET", "JOBWIRE_TOKEN")}
    return {**env, **extra}


def test_version_prints_the_installed_version() -> None:
    result = subprocess.run([JOBWIRE, "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"jobwire {metadata.version('jobwire')}"


def test_handlers_module_is_found_in_the_current_directory(tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(textwrap.dedent("""
        from jobwire_server.handlers import JobContext, Kind

        greet = Kind("greet")

        @greet.phase("run")
        async def run(ctx: JobContext) -> str:
            return "hello " + ctx.payload.decode()
    """))
    target = f"127.0.0.1:{free_port()}"
    # The script, not `python -m`, which would put the directory on sys.path by itself.
    process = subprocess.Popen([JOBWIRE, "serve", "--listen", target, "--db", str(tmp_path / "j.db"),
                                "--handlers", "myapp.jobs"], cwd=tmp_path, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_serving(target, process)
        with Client(target) as client:
            assert client.enqueue("greet", b"world").result(timeout=TIMEOUT) == b"hello world"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err


def test_health_waits_for_a_server_that_is_starting(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([JOBWIRE, "serve", "--listen", target, "--db", str(tmp_path / "j.db")],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Asked at once, while the server is still importing and opening its database.
        result = subprocess.run([JOBWIRE, "health", "--wait", "30", "--target", target], capture_output=True,
                                text=True, timeout=TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "jobwire.v1.JobService: SERVING"
        whole = subprocess.run([JOBWIRE, "health", "--service", "", "--json", "--target", target],
                               capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert json.loads(whole.stdout) == {"service": "", "status": "SERVING"}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)


def test_health_of_nothing_listening() -> None:
    target = f"127.0.0.1:{free_port()}"
    once = subprocess.run([JOBWIRE, "health", "--target", target], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert once.returncode == 3 and "(UNAVAILABLE)" in once.stderr
    waited = subprocess.run([JOBWIRE, "health", "--wait", "0.5", "--target", target], capture_output=True,
                            text=True, timeout=TIMEOUT, check=False)
    assert waited.returncode == 1
    assert waited.stderr.strip() == f"error: {target} did not report jobwire.v1.JobService SERVING within 0.5s"


def test_ctrl_c_during_watch_says_the_job_keeps_running(server: ServerProcess) -> None:
    watch = subprocess.Popen([JOBWIRE, "enqueue", "sleep", "--payload", '{"seconds": 60}', "--watch"],
                             env=_env(JOBWIRE_TARGET=server.target), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    job_id = ""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(watch.stdout, selectors.EVENT_READ)
            while True:  # until the watch shows the job running
                assert selector.select(timeout=TIMEOUT), "the watch printed nothing"
                line = watch.stdout.readline()
                assert line, "the watch ended early"
                if line.startswith("enqueued "):
                    job_id = line.split()[1]
                # Running: the enqueue's own commit may already have claimed it (then the watch
                # starts from a RUNNING snapshot), or a PHASE_STARTED event shows it.
                if "PHASE_STARTED" in line or "state=RUNNING" in line:
                    break
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=TIMEOUT)
        assert watch.returncode == 130
        assert "Traceback" not in err
        assert (f"stopped watching job {job_id} [RUNNING]; the job keeps running on the server. "
                f"Watch it again with: jobwire watch {job_id}") in err
        with Client(server.target) as client:
            assert client.get_job(job_id).state == "RUNNING"
    finally:
        if watch.poll() is None:
            watch.kill()
        if job_id:
            with Client(server.target) as client:
                client.handle(job_id).cancel("test over")
