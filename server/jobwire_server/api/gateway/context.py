"""What a servicer method sees of an HTTP request: the call context it would get from grpc.aio.

The servicer reads the call's metadata (the bearer token, ``traceparent``) and ends a call with
``abort_with_status``; here that raises `HttpAbort`, which the gateway turns into the HTTP answer.
`HttpAbort` is a grpc.aio ``AbortError``, so the servicer's error mapping passes it through exactly
as it passes a real abort.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

import grpc
from grpc import aio
from multidict import CIMultiDictProxy

from jobwire_server.api.errors import status_with

#: HTTP headers a servicer reads as gRPC metadata.
FORWARDED_HEADERS: Final = ("authorization", "traceparent", "tracestate")


class HttpAbort(aio.AbortError):
    """A servicer ended the call with `status`."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class HttpContext:
    """The part of ``grpc.aio.ServicerContext`` the servicers use, for one HTTP request."""

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        # Every value, so two Authorization headers are refused as two gRPC entries are.
        self._metadata = tuple((name, value) for name in FORWARDED_HEADERS for value in headers.getall(name, ()))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise HttpAbort(status)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise HttpAbort(status_with(code, details, code.name))

    def peer(self) -> str:
        return "http"

    def time_remaining(self) -> float | None:
        return None
