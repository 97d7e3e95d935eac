"""One SQLite connection on its own thread.

Every store call runs as one plain function on the connection's thread, so a whole transaction
costs one hop from the event loop and back, however many statements it runs. Calls run one at a
time in submission order; that order is what serializes the writer's transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future[Any]]


class ConnectionThread:
    """Owns a `sqlite3.Connection` and the thread that uses it. Only that thread touches the
    connection: it opens it, runs every call in submission order, and closes it last."""

    def __init__(self, path: str, name: str) -> None:
        self._path = path
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        #: Set by close(): new calls are refused; calls already queued still run first.
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        # Daemon: a connection someone forgot to close must not keep the process alive.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Start the thread, connect and run `setup` (pragmas) there."""
        self._thread.start()
        try:
            await self._submit(self._connect, setup)
        except BaseException:
            await self.close()
            raise

    def _connect(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
        self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        setup(self._conn)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(connection, *args)` on the connection's thread. A caller that is cancelled
        does not stop it: what it started commits or rolls back as a whole."""
        if self._closing or not self._thread.is_alive():
            raise ConnectionClosed
        return await self._submit(self._with_connection, function, *args)

    def _with_connection(self, function: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise ConnectionClosed
        return function(self._conn, *args)

    async def _submit(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((function, args, loop, future))
        return await future

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            function, args, loop, future = call
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the caller, never lost on this thread
                _post(loop, future, exc, failed=True)
            else:
                _post(loop, future, result, failed=False)

    async def close(self) -> None:
        """Close the connection after every call already queued, and end the thread. Idempotent;
        concurrent closes all wait for the one close."""
        if self._closed is None:
            self._closing = True
            loop = asyncio.get_running_loop()
            self._closed = loop.create_future()
            if self._thread.is_alive():
                self._calls.put((self._disconnect, (), loop, self._closed))
                self._calls.put(None)
            else:
                self._closed.set_result(None)
        await asyncio.shield(self._closed)
        if self._thread.is_alive():
            self._thread.join(5.0)  # it has answered its last call: a wait of microseconds

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class ConnectionClosed(Exception):
    """The connection was closed (or never opened)."""


def _post(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any, *, failed: bool) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(_resolve, future, value, failed)


def _resolve(future: asyncio.Future[Any], value: Any, failed: bool) -> None:
    if future.done():  # the caller was cancelled
        return
    if failed:
        future.set_exception(value)
    else:
        future.set_result(value)
