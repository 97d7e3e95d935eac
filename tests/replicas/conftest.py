"""Fixtures of the replica tests: a cluster of `jobwire serve` processes on a fresh database, and a
connection to read that database directly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import StartServer
from tests.replicas.cluster import Cluster, connect


@pytest.fixture
def cluster(pg_url: str, start_server: StartServer, tmp_path: Path) -> Cluster:
    """No replica started yet: `cluster.start(name, **flags)`. The database (`pg_url`) is set up
    first, so it is dropped only after every replica has been stopped."""
    return Cluster(start_server, pg_url, tmp_path / "ledger")


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(pg_url)
    try:
        yield conn
    finally:
        await conn.close()
