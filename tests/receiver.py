"""A real HTTP webhook receiver on loopback for tests: records every request and answers from a
script (status, headers, or holding the request open until the test releases it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    #: Hold the request open until `Receiver.release()` (a hung receiver, or a timeout).
    hold: bool = False


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    time: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: deque[Answer] = deque()
        self._arrived = asyncio.Condition()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order; 200 after they run out."""
        self._script.extend(answers)

    def release(self) -> None:
        """Let held requests answer."""
        self._released.set()

    async def wait_for(self, count: int, within: float = 20.0) -> list[Received]:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = self._script.popleft() if self._script else Answer()
        async with self._arrived:
            self.requests.append(Received(request.path, dict(request.headers), body, time.time()))
            self._arrived.notify_all()
        if answer.hold:
            await self._released.wait()
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    async def wait_until(self, done: Callable[[list[Received]], bool], within: float = 20.0) -> list[Received]:
        """Wait until `done(requests so far)` holds."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: done(self.requests))
        return list(self.requests)
