"""Webhook receivers that misbehave, on loopback, each on its own port (its own destination).

Written on raw asyncio sockets so that each misbehaviour is exact: ``hang`` reads the request and
never answers; ``drip`` answers one byte every ``drip_interval`` seconds, forever; ``huge`` sends
a 200 with an endless body; ``reset`` closes with a TCP reset; ``redirect`` answers 307 to a URL
the test names. Every request's arrival is counted per mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter

MODES = ("hang", "drip", "huge", "reset", "redirect")


class Hostile:
    def __init__(self, *, redirect_to: str = "", drip_interval: float = 0.5) -> None:
        self.redirect_to = redirect_to
        self.drip_interval = drip_interval
        self.ports: dict[str, int] = {}
        self.arrivals: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._arrived = asyncio.Condition()

    async def __aenter__(self) -> Hostile:
        for mode in MODES:
            server = await asyncio.start_server(lambda r, w, m=mode: self._accept(m, r, w), "127.0.0.1", 0)
            self._servers.append(server)
            self.ports[mode] = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.ports[mode]}/{mode}"

    async def wait_arrivals(self, mode: str, count: int, within: float = 20.0) -> None:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: self.arrivals[mode] >= count)

    async def _accept(self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await _read_request(reader)
            async with self._arrived:
                self.arrivals[mode] += 1
                self._arrived.notify_all()
            await getattr(self, f"_{mode}")(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes

    async def _drip(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        for index in range(10**6):
            writer.write(answer[index % len(answer):][:1])
            await writer.drain()
            self.bytes_sent["drip"] += 1
            await asyncio.sleep(self.drip_interval)  # sleep-ok: the misbehaviour itself, not a wait for something

    async def _huge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
        chunk = b"x" * 65536
        while self.bytes_sent["huge"] < 512 * 1024 * 1024:
            writer.write(chunk)
            await writer.drain()
            self.bytes_sent["huge"] += len(chunk)

    async def _reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _redirect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 307 Temporary Redirect\r\nlocation: {self.redirect_to}\r\n"
                     "content-length: 0\r\n\r\n".encode())
        await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)
