"""One webhook attempt over HTTP: a POST that goes only to checked addresses, follows no
redirect, and reads at most a capped amount of the answer. The whole attempt (address check,
connecting, sending, the answer's headers and body) has one time limit, so a receiver that
trickles its answer a byte at a time is cut off like one that never answers."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from jobwire_server.engine.webhooks.guard import AddressGuard, AddressRefused

#: Bytes of the answer kept in the delivery log; the rest of the body (up to `read_cap`) is discarded.
LOGGED_RESPONSE = 1024


class CheckedResolver(AbstractResolver):
    """aiohttp resolves host names through the guard, so it connects only to checked addresses."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        addresses = await self._guard.resolve(host, port)
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in addresses]

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int = 0
    response: str = ""
    error: str = ""
    #: Seconds the receiver asked us to wait (429/503 Retry-After), if it said.
    retry_after: float | None = None
    refused: bool = False
    latency: float = 0.0


class WebhookClient:
    def __init__(self, guard: AddressGuard, *, timeout: float, read_cap: int, connections: int,
                 per_host: int = 0) -> None:
        self._guard = guard
        self._timeout = timeout
        self._read_cap = read_cap
        self._connections = connections
        self._per_host = per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(self._guard), use_dns_cache=False,
                                         limit=self._connections, limit_per_host=self._per_host)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpResult:
        if self._session is None:
            raise RuntimeError("webhook client is not started")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                await self._guard.target(url)  # refuses before connecting; literal IPs skip the resolver
                result = await self._post(self._session, url, body, headers)
        except AddressRefused as exc:
            result = HttpResult(error=f"refused: {exc}", refused=True)
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, AddressRefused)
            result = HttpResult(error=f"refused: {exc.os_error}" if refused else f"cannot connect: {exc.os_error}",
                                refused=refused)
        except TimeoutError:
            result = HttpResult(error=f"timed out after {self._timeout:g}s")
        except aiohttp.ClientError as exc:
            result = HttpResult(error=f"{exc.__class__.__name__}: {exc}")
        return _with_latency(result, time.monotonic() - started)

    async def _post(self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
                    ) -> HttpResult:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        all_headers = {"content-type": "application/json", "user-agent": "jobwire-webhooks/1", **headers}
        async with session.post(url, data=body, headers=all_headers, allow_redirects=False, timeout=timeout) as resp:
            data = await resp.content.read(self._read_cap)
            text = data[:LOGGED_RESPONSE].decode("utf-8", errors="replace")
            return HttpResult(status=resp.status, response=text, retry_after=_retry_after(resp.headers))


def _with_latency(result: HttpResult, seconds: float) -> HttpResult:
    return HttpResult(result.status, result.response, result.error, result.retry_after, result.refused, seconds)


def _retry_after(headers: Any) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
