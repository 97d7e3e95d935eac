"""The HTTP gateway: JSON for every unary RPC, Server-Sent Events for the streams, the OpenAPI
document, the console's files and (when metrics are kept) ``/metrics``, all on one aiohttp server on
the service's event loop.

It adds no behaviour of its own: each request is decoded into the RPC's request message, checked
by the same token rules as a gRPC call (`TokenAuthInterceptor.refusal`) and handed to the same
servicer method, whose answer or status is encoded back.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware
from google.protobuf.message import Message
from opentelemetry.trace import Tracer

from jobwire_server.api.auth import TokenAuthInterceptor
from jobwire_server.api.errors import status_with, to_status
from jobwire_server.api.gateway.codec import decode_request, http_status, message_json, status_json
from jobwire_server.api.gateway.context import HttpAbort, HttpContext
from jobwire_server.api.gateway.openapi import openapi_document
from jobwire_server.api.gateway.routes import ROUTES, STREAM_ROUTES, Route, StreamRoute, aiohttp_path
from jobwire_server.api.gateway.sse import EventWriter, close_stream, paced
from jobwire_server.api.gateway.tracing import tracing_middleware
from jobwire_server.api.servicer import JobServicer
from jobwire_server.domain.errors import JobwireError
from jobwire_server.metrics import Metrics

__all__ = ["CONSOLE_DIR", "Gateway", "tls_context"]

CONSOLE_DIR: Final = Path(__file__).resolve().parent.parent / "console"
#: Seconds open requests get to finish when the gateway stops (streams have ended by then).
STOP_GRACE: Final = 1.0
#: Seconds a job's event stream (the firehose) may stay silent before its headers go out with a heartbeat.
OPEN_WITHIN: Final = 1.0
FIREHOSE_OPEN_WITHIN: Final = 0.1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """Start with `start(host, port)`; `port` is the bound port afterwards. `stop()` is idempotent."""

    def __init__(self, servicer: JobServicer, *, auth: TokenAuthInterceptor | None = None,
                 metrics: Metrics | None = None, heartbeat: float = 15.0, max_body: int = 8 << 20,
                 tls: ssl.SSLContext | None = None, tracer: Tracer | None = None) -> None:
        self._servicer = servicer
        self._tracer = tracer
        self._auth = auth
        self._metrics = metrics
        self._heartbeat = heartbeat
        self._tls = tls
        self._runner: web.AppRunner | None = None
        self.app = self._application(max_body)
        self.port = 0

    # ------------------------------------------------------------------ life

    async def start(self, host: str, port: int) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=STOP_GRACE, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._tls, reuse_port=False)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------ routing

    def _application(self, max_body: int) -> web.Application:
        # Tracing outermost, so its span sees every answer's status, the router's JSON errors included.
        middlewares: list[Middleware] = [_json_errors]
        if self._tracer is not None:
            middlewares.insert(0, tracing_middleware(self._tracer))
        app = web.Application(client_max_size=max_body, middlewares=middlewares)
        for route in ROUTES:
            app.router.add_route(route.method, aiohttp_path(route.path), self._unary(route))
        for stream in STREAM_ROUTES:
            app.router.add_route(stream.method, aiohttp_path(stream.path), self._stream(stream))
        document = openapi_document()

        async def openapi(request: web.Request) -> web.Response:
            return _json(document)

        app.router.add_get("/v1/openapi.json", openapi)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/", _console_page)
        app.router.add_static("/console/", CONSOLE_DIR, append_version=False)
        return app

    def _unary(self, route: Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            context = HttpContext(request.headers)
            try:
                self._check_access(route, context)
                message = decode_request(route.descriptor.input_type, await request.read() if route.body else None,
                                         request.match_info, _query(request, route))
                reply: Message = await getattr(self._servicer, route.rpc)(message, context)
            except HttpAbort as exc:
                return _error(exc.status)
            except JobwireError as exc:
                return _error(to_status(exc))
            return _json(message_json(reply))

        return handle

    def _stream(self, route: StreamRoute) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            context = HttpContext(request.headers)
            query = _query(request, route)
            resume = request.headers.get("Last-Event-ID", "").strip()
            if route.resume and resume:
                query.append((route.resume, resume))
            try:
                self._check_access(route, context)
                message = decode_request(route.descriptor.input_type, None, request.match_info, query, route.aliases)
            except HttpAbort as exc:
                return _error(exc.status)
            except JobwireError as exc:
                return _error(to_status(exc))
            return await self._run_stream(request, route, message, context)

        return handle

    async def _run_stream(self, request: web.Request, route: StreamRoute, message: Message,
                          context: HttpContext) -> web.StreamResponse:
        writer = EventWriter(request, with_ids=bool(route.resume))
        stream = getattr(self._servicer, route.rpc)(message, context)
        try:
            # The headers wait for the first event, or a short while (a job's stream reads the store
            # first), so a refusal at the start (not found, too many streams) is an ordinary JSON error.
            first = OPEN_WITHIN if route.resume else FIREHOSE_OPEN_WITHIN
            async for item in paced(stream, self._heartbeat, writer.heartbeat, first=first):
                await writer.send(item)
        except HttpAbort as exc:
            if not writer.started:
                return _error(exc.status)
            await writer.finish(exc.status)
            return writer.response
        except ConnectionError:  # the client went away mid-write
            return writer.response
        finally:
            await close_stream(stream)
        if not writer.started:
            return web.Response(status=204)  # nothing left after Last-Event-ID: EventSource stops here
        await writer.finish(None)
        return writer.response

    def _check_access(self, route: Route, context: HttpContext) -> None:
        if self._auth is not None:
            refused = self._auth.refusal(route.full_method, context.invocation_metadata())
            if refused is not None:
                raise HttpAbort(refused)

    async def _scrape(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        body, content_type = await self._metrics.render(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response


def _query(request: web.Request, route: Route) -> list[tuple[str, str]]:
    """Query parameters fill the request of a route without a body; a body route takes none."""
    return [] if route.body else list(request.query.items())


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(status: grpc.Status) -> web.Response:
    return _json(status_json(status), http_status(status.code))


async def _console_page(request: web.Request) -> web.FileResponse:
    response = web.FileResponse(CONSOLE_DIR / "index.html")
    # The console loads only its own files and talks only to this origin.
    response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                   "frame-ancestors 'none'; base-uri 'none'")
    return response


#: What an HTTP error of aiohttp's router or body reader means in gRPC terms.
_ROUTER_CODES: Final = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
                        413: grpc.StatusCode.RESOURCE_EXHAUSTED}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /v1 every answer is JSON: the router's own 404/405/413 become a Status too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        code = _ROUTER_CODES.get(exc.status)
        if code is None or not request.path.startswith("/v1/"):
            raise
        response = _error(status_with(code, f"{exc.reason}: {request.method} {request.path[:200]}", code.name))
        response.set_status(exc.status)
        if "Allow" in exc.headers:  # a 405 names the methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def tls_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """The gateway's TLS: the gRPC server's certificate and key; with `client_ca`, mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
