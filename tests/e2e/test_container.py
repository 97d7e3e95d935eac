"""The container image, built from the repository's Dockerfile and run with podman as an operator runs it:
it refuses to start without tokens or an opt-out; with a tokens file it serves (on a read-only root, with no
capabilities), its HEALTHCHECK passes, it runs as the non-root user, a job enqueued through it with the Python
SDK succeeds; SIGTERM drains it (a running job goes back to the queue, attempt not spent) and it exits 0; a new
container on the same volume has the jobs.

The base image is a stand-in: no container registry is reachable from the machines that run these tests, so
`python:3.12-slim-bookworm` cannot be pulled. The test makes a Debian bookworm root file system with
debootstrap (Debian's Python 3.11 and pip, shaped like the official image: `python` and `pip` on the path,
pip allowed to install) and builds the Dockerfile on it through its PYTHON_IMAGE build argument. The build
reaches the Python package index as the Dockerfile's own steps do.

Engine settings for these machines: builds use chroot isolation and containers the runc runtime, with limits
no higher than this process's own (the sandbox may not raise them).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobwire import errors, models
from jobwire.sync import Client

from tests.conftest import REPO, free_port

BASE_IMAGE = "localhost/jobwire-test-base:bookworm"
TOKEN = "container-test-token"
BUILD_TIMEOUT = 900.0
START_TIMEOUT = 60.0
INSTALL_HINT = "apt-get install podman runc debootstrap (as .ci/run does)"
# The first test also makes the base (about a minute) and builds the image.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 300)


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def run_options() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def make_base_image(work: Path) -> None:
    """A Debian bookworm image with Python and pip where the official Python image has them."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    root = work / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates",
                    "bookworm", str(root)], check=True, capture_output=True, timeout=BUILD_TIMEOUT)
    (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    # This machine's trust store (it may hold the CA of a proxy in front of the package index).
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
    archive = work / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True, timeout=BUILD_TIMEOUT)
    podman("import", str(archive), BASE_IMAGE, timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is needed to build and run the image: {INSTALL_HINT}"
    work = tmp_path_factory.mktemp("image")
    make_base_image(work)
    tag = f"localhost/jobwire-test:{uuid.uuid4().hex[:12]}"
    before = set(podman("images", "--all", "--quiet", "--no-trunc").stdout.split())
    podman("build", "--layers=false", "--isolation", "chroot", "--format", "docker", "--network", "host",
           "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--tag", tag, str(REPO), timeout=BUILD_TIMEOUT)
    yield tag
    # The image and the build stage's, which the build leaves untagged; the base stays for the next run.
    made = set(podman("images", "--all", "--quiet", "--no-trunc").stdout.split()) - before
    podman("rmi", "--force", *made, check=False)


class Container:
    """One `podman run -d` of the image, removed (with its volume) at the end of the test."""

    def __init__(self, image: str, volume: str, tokens: Path | None, env: dict[str, str]) -> None:
        self.name = f"jobwire-test-{uuid.uuid4().hex[:12]}"
        self.volume = volume
        self.port = free_port()
        # As deploy/kubernetes runs it: read-only root (podman adds a /tmp of its own, as the emptyDir there),
        # no capabilities, no privilege escalation.
        args = ["run", "--detach", "--name", self.name, *run_options(), "--read-only", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges",
                "--publish", f"127.0.0.1:{self.port}:50051", "--volume", f"{volume}:/var/lib/jobwire"]
        if tokens is not None:
            args += ["--volume", f"{tokens}:/etc/jobwire/tokens.toml:ro",
                     "--env", "JOBWIRE_TOKENS_FILE=/etc/jobwire/tokens.toml"]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        podman(*args, image)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self) -> None:
        health = subprocess.run([str(Path(REPO / ".venv" / "bin" / "jobwire")), "health", "--target", self.target,
                                 "--wait", str(START_TIMEOUT)], capture_output=True, text=True,
                                timeout=START_TIMEOUT + 10, check=False)
        assert health.returncode == 0, health.stdout + health.stderr + self.logs()

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return podman("inspect", "--format", "{{." + field + "}}", self.name).stdout.strip()


@pytest.fixture
def containers(image: str) -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        podman("rm", "--force", "--time", "0", container.name, check=False)
    for volume in {c.volume for c in started}:
        podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    digest = subprocess.run([str(REPO / ".venv" / "bin" / "jobwire"), "hash-token"], input=TOKEN, text=True,
                            capture_output=True, check=True, timeout=60).stdout.strip()
    path = tmp_path / "tokens.toml"
    path.write_text(f'[[token]]\nname = "test"\nsha256 = "{digest}"\nscopes = ["admin"]\n')
    path.chmod(0o644)  # read by the image's user
    return path


def test_the_image_refuses_to_start_without_tokens_or_an_opt_out(image: str) -> None:
    result = podman("run", "--rm", *run_options(), image, check=False, timeout=START_TIMEOUT)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:50051 without authentication" in result.stderr


def test_the_image_serves_jobs_and_drains_on_sigterm(image: str, containers: list[Container],
                                                     tokens_file: Path) -> None:
    volume = f"jobwire-test-{uuid.uuid4().hex[:12]}"
    first = Container(image, volume, tokens_file, {"JOBWIRE_SHUTDOWN_GRACE": "4", "JOBWIRE_CANCEL_GRACE": "1"})
    containers.append(first)
    first.wait_serving()
    assert podman("healthcheck", "run", first.name, check=False).returncode == 0  # the image's HEALTHCHECK
    assert podman("exec", first.name, "id", "-u").stdout.strip() == "10001"
    assert first.state("Config.StopSignal") in {"15", "SIGTERM"}

    with Client(first.target) as anonymous, pytest.raises(errors.Unauthenticated):
        anonymous.enqueue("noop", {"n": 1})
    with Client(first.target, token=TOKEN) as client:
        done = client.enqueue("noop", {"n": 1})
        done.result(timeout=30)
        assert done.get().state is models.JobState.SUCCEEDED
        running = client.enqueue("sleep", {"seconds": 600, "phases": 1})
        # The snapshot, then the changes: wait on the stream until the job runs.
        assert any(e.job is not None and e.job.state is models.JobState.RUNNING for e in running.watch())

    started = time.monotonic()
    podman("stop", "--time", "30", first.name, timeout=60)  # SIGTERM; SIGKILL only after 30 s
    assert time.monotonic() - started < 30
    assert first.state("State.ExitCode") == "0", first.logs()
    assert "signal received: draining" in first.logs()

    second = Container(image, volume, tokens_file, {"JOBWIRE_CONCURRENCY": "1"})
    containers.append(second)
    second.wait_serving()
    with Client(second.target, token=TOKEN) as client:
        assert client.get_job(done.id).state is models.JobState.SUCCEEDED  # kept in the volume
        job = client.get_job(running.id)
        assert [e.type for e in job.error_history] == ["SHUTDOWN"]
        # Interrupted by the shutdown, the attempt is not spent: 0 counted, or 1 once this server runs it again.
        assert job.counted_attempts <= 1 and job.attempt == job.counted_attempts + 1
