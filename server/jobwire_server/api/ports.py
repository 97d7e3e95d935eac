"""Whether the port the server is about to listen on is free."""

from __future__ import annotations

import errno
import socket


def port_in_use(host: str, port: int) -> str:
    """The OS's reason when ``host:port`` is taken by another socket, else ''.

    Checked before gRPC binds: gRPC core prints its own error line on stderr for a busy port, and
    jobwire's one-line error should be the only one. Other failures are left to gRPC to report.
    """
    if port == 0:
        return ""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return ""
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            # gRPC sets SO_REUSEADDR too, so a port left in TIME_WAIT is not "in use" for either.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return exc.strerror or "address already in use"
    return ""
