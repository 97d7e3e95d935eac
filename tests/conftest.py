"""Shared fixtures: a real `jobwire serve` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0

# Servers started by the tests (in process or as subprocesses) export no spans unless a test asks:
# a developer's OTEL_* settings or an installed OTLP exporter must not change what the tests see.
os.environ["OTEL_TRACES_EXPORTER"] = "none"
# `jobwire serve` opens the HTTP gateway on 127.0.0.1:8080 by default: servers started by the tests
# open none (tests run side by side on one machine) unless a test asks with --http-listen.
os.environ["JOBWIRE_HTTP_LISTEN"] = "off"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    target: str
    #: The SQLite file, or the PostgreSQL URL, the server was started on.
    db_path: Path | str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    """Block until the server's health check answers SERVING (or the process dies)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
    raise TimeoutError(f"server at {target} did not serve within {timeout}s")


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Factory: start_server(db=None, **flags) → a serving ServerProcess; all are stopped after the test.
    `db` is a SQLite file (a fresh one in tmp_path when None) or a PostgreSQL URL (see `pg_url`)."""
    started: list[ServerProcess] = []

    def start(db: Path | str | None = None, env: dict[str, str] | None = None, **flags: object) -> ServerProcess:
        port = free_port()
        db_path = db or tmp_path / f"jobwire-{len(started)}.db"
        args = [sys.executable, "-m", "jobwire_server", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db_path)]
        for name, value in flags.items():
            flag = "--" + name.replace("_", "-")
            for item in value if isinstance(value, list) else [value]:
                args += [flag] if item is True else [flag, str(item)]
        log_path = tmp_path / f"server-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})})
        server = ServerProcess(process, f"127.0.0.1:{port}", db_path, log_path)
        started.append(server)
        try:
            wait_serving(server.target, process)
        except Exception:
            server.stop(signal.SIGKILL)
            raise RuntimeError(f"server failed to start:\n{server.log()}") from None
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)  # a test may have left it stopped (SIGSTOP)
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    return start_server()


# PostgreSQL fixtures (`pg_template`, `pg_url`) for every test that needs the shared store.
from tests.pg import pg_template, pg_url  # noqa: E402, F401
