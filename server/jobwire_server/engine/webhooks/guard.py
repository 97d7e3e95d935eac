"""Where webhooks may go: http(s) URLs whose every address is public, unless allow-listed.

The check runs at enqueue and again before every attempt (DNS answers change). The HTTP client
connects only to addresses this module returned, so what was checked is what is reached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(OSError):
    """The URL may not be called: a bad scheme, a host that does not resolve, or a non-public
    address that no allow-list entry covers. The message says which."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    addresses: tuple[str, ...]


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address is not public (None when it is)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    checks = (
        (address.is_unspecified, "unspecified"), (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"), (address.is_multicast, "multicast"),
        (address.is_private, "private"), (address.is_reserved, "reserved"),
    )
    for refused, name in checks:
        if refused:
            return f"a {name} address"
    return None if address.is_global else "not a public address"


class AddressGuard:
    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._networks: list[IPNetwork] = []
        self._hosts: set[str] = set()
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry.strip().lower().rstrip("."))

    def parse(self, url: str) -> tuple[str, int]:
        """Host and port of an http(s) URL, or AddressRefused."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise AddressRefused(f"malformed URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise AddressRefused(f"scheme {parts.scheme!r} is not http or https")
        if not parts.hostname:
            raise AddressRefused("URL has no host")
        return parts.hostname.lower().rstrip("."), port or (443 if parts.scheme == "https" else 80)

    def check_addresses(self, host: str, addresses: Iterable[str]) -> tuple[str, ...]:
        """All of `addresses` (a host's answers) when every one may be reached; else AddressRefused."""
        checked = tuple(dict.fromkeys(addresses))
        if not checked:
            raise AddressRefused(f"host {host} has no address")
        if host in self._hosts:
            return checked
        for text in checked:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if any(address in network for network in self._networks):
                continue
            reason = refusal_reason(address)
            if reason is not None:
                raise AddressRefused(f"{host} resolves to {address}, {reason} (allow it with --webhook-allow)")
        return checked

    async def resolve(self, host: str, port: int) -> tuple[str, ...]:
        """Every address `host` has now, checked."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            return self.check_addresses(host, [str(literal)])
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise AddressRefused(f"host {host} does not resolve: {exc}") from None
        return self.check_addresses(host, [str(info[4][0]) for info in infos])

    async def target(self, url: str) -> Target:
        host, port = self.parse(url)
        return Target(host, port, await self.resolve(host, port))
