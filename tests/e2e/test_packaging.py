"""The Python distribution as a user installs it: `pip install jobwire` is the SDK and the client commands
with three dependencies; the server and its dependencies come with the `server` extra."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, ServerProcess
from tests.docs.test_docs import _copy_repository, clean_env

TIMEOUT = 300.0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built from a copy of the tree (a build writes build/ and *.egg-info beside the sources),
    and what the build printed."""
    source = tmp_path_factory.mktemp("source")
    _copy_repository(source)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                            str(source)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("jobwire-*.whl")
    return path, built.stdout + built.stderr


def _metadata(wheel_path: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel_path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_wheel_metadata(wheel: tuple[Path, str]) -> None:
    path, log = wheel
    meta = _metadata(path)
    requires = meta.get_all("Requires-Dist") or []
    plain = {r for r in requires if "extra ==" not in r}
    assert plain == {"grpcio<2,>=1.85.1", "grpcio-status<2,>=1.85.1", "protobuf<8,>=7.36.2"}
    server = {r.split(";")[0].split("<")[0].split(">")[0] for r in requires if 'extra == "server"' in r}
    assert {"opentelemetry-sdk", "grpcio-health-checking", "grpcio-reflection", "aiohttp",
            "standardwebhooks", "prometheus_client"} <= server
    for requirement in requires:  # every dependency has a tested lower bound and an upper bound
        spec = requirement.split(";")[0]
        # tzdata is data, not an API: a version is a year's time zone rules, and newer is always right.
        if not spec.startswith(("jobwire", "types-", "setuptools", "tzdata")):
            assert ">=" in spec and "<" in spec, requirement
    assert meta["License-Expression"] == "Apache-2.0"
    assert "deprecat" not in log.lower(), log
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    assert {"jobwire/cli.py", "jobwire/py.typed", "jobwire/v1/jobwire_pb2.pyi", "jobwire_server/app.py"} <= names


def test_constraints_pin_every_range(wheel: tuple[Path, str]) -> None:
    pins = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
            for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    for requirement in _metadata(wheel[0]).get_all("Requires-Dist") or []:
        if 'extra == "otlp"' in requirement:
            continue  # the OTLP exporters are not part of what `make` and CI install
        name = requirement.split(";")[0].split("<")[0].split(">")[0].split("[")[0].strip().lower().replace("_", "-")
        if name != "jobwire":
            assert name in pins, f"{name} is not pinned in constraints.txt"


def test_client_only_install(wheel: tuple[Path, str], server: ServerProcess, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    python, jobwire = str(venv / "bin" / "python"), str(venv / "bin" / "jobwire")
    env = clean_env()
    installed = subprocess.run([python, "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"),
                                str(wheel[0])], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False)
    assert installed.returncode == 0, installed.stderr
    frozen = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            env=env, check=True).stdout.lower()
    names = {line.split("==")[0] for line in frozen.splitlines()}
    assert {"grpcio", "protobuf", "grpcio-status"} <= names
    assert not names & {"aiohttp", "opentelemetry-sdk", "prometheus-client", "standardwebhooks"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([jobwire, *args], capture_output=True, text=True, cwd=tmp_path,
                              env={**env, "JOBWIRE_TARGET": server.target}, timeout=TIMEOUT, check=False)

    assert run("--version").stdout.strip() == "jobwire 0.1.0"
    serve = run("serve", "--listen", "127.0.0.1:0")
    assert serve.returncode == 1
    (line,) = serve.stderr.strip().splitlines()
    assert line.startswith("jobwire: error: `jobwire serve` is part of the server, which is not installed here: "
                           "pip install 'jobwire[server]' (missing module ")
    watched = run("enqueue", "noop", "--payload", '{"from": "client-only"}', "--watch")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip().splitlines()[-1].endswith("SUCCEEDED")
    sdk = subprocess.run([python, "-c", "import asyncio, jobwire\n"
                          "async def main():\n"
                          f"    async with jobwire.Client({server.target!r}) as client:\n"
                          "        handle = await client.enqueue('noop', payload=b'sdk')\n"
                          "        print((await handle.result()).decode())\n"
                          "asyncio.run(main())"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=TIMEOUT, check=False)
    assert sdk.returncode == 0, sdk.stderr
    assert sdk.stdout.strip() == "sdk"
    assert os.path.exists(venv / "lib")  # the venv is the one these commands ran in


def test_wheel_ships_the_console(wheel: tuple[Path, str]) -> None:
    console = REPO / "server" / "jobwire_server" / "api" / "console"
    shipped = {f"jobwire_server/api/console/{f.name}" for f in console.iterdir() if f.is_file()}
    assert {"jobwire_server/api/console/index.html", "jobwire_server/api/console/app.js"} <= shipped
    with zipfile.ZipFile(wheel[0]) as archive:
        names = set(archive.namelist())
        assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
        page = archive.read("jobwire_server/api/console/index.html").decode()
    assert '<script type="module" src="/console/app.js">' in page
