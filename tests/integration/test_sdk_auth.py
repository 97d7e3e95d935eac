"""Bearer tokens from the SDK against a real server started with a tokens file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jobwire
import pytest

from tests.conftest import ServerProcess, StartServer

READER = "reader-secret-token"
WRITER = "writer-secret-token"


def write_tokens_file(directory: Path) -> Path:
    """A tokens file granting READER `jobs:read` and WRITER `jobs:read` + `jobs:write`."""

    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    path = directory / "tokens.toml"
    path.write_text(
        f'[[token]]\nname = "reader"\nsha256 = "{digest(READER)}"\nscopes = ["jobs:read"]\n\n'
        f'[[token]]\nname = "writer"\nsha256 = "{digest(WRITER)}"\nscopes = ["jobs:read", "jobs:write"]\n'
    )
    return path


@pytest.fixture
def secured(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    return start_server(tokens_file=write_tokens_file(tmp_path))


async def test_missing_or_wrong_token_is_unauthenticated(secured: ServerProcess) -> None:
    for token in (None, "not-a-token"):
        async with jobwire.Client(secured.target, token=token) as client:
            with pytest.raises(jobwire.Unauthenticated) as info:
                await client.queue_stats()
            assert info.value.reason == "UNAUTHENTICATED"
            with pytest.raises(jobwire.Unauthenticated):
                await client.enqueue("noop")


async def test_scopes_are_enforced(secured: ServerProcess) -> None:
    async with jobwire.Client(secured.target, token=READER) as reader:
        with pytest.raises(jobwire.PermissionDenied) as info:
            await reader.enqueue("noop")
        assert info.value.reason == "PERMISSION_DENIED"
        assert [j async for j in reader.list_jobs()] == []
    async with jobwire.Client(secured.target, token=WRITER) as writer:
        handle = await writer.enqueue("noop", payload={"ok": True})
        assert await handle.result(timeout=30) == b'{"ok":true}'
    async with jobwire.Client(secured.target, token=READER) as reader:
        assert (await reader.get_job(handle.id)).id == handle.id
