"""The HTTP/JSON and Server-Sent Events gateway, and the console it serves (see docs/api.md#http)."""

from jobwire_server.api.gateway.server import CONSOLE_DIR, Gateway, tls_context

__all__ = ["CONSOLE_DIR", "Gateway", "tls_context"]
