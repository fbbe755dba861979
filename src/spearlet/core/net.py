"""Outbound HTTP the node makes on a caller's behalf (completion callbacks, artifact downloads):
URLs parsed the way they will be sent, and destinations checked against an allow-list.

A URL is parsed once, by the client that sends it, when the caller hands it over: what cannot be
sent (a newline, an IPv4 address written in octal, a port out of range) is the caller's
INVALID_ARGUMENT then, not a failure in the background later. Host names that look like numbers
are refused unless they are a canonical address, since resolvers read `0177.0.0.1` or `127.1` as
127.0.0.1 while people, and allow-lists, read them otherwise.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence

import httpx

from spearlet.core.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def parse_http_url(url: str, what: str, schemes: Sequence[str] = ("http", "https")) -> httpx.URL:
    """`url` as the HTTP client will send it (fragment dropped), or InvalidArgument naming `what`."""
    shown = url[:200]
    if len(url) > 4096 or any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidArgument(f"{what} must be at most 4096 characters, without control characters")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidArgument(f"{what} {shown!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in schemes or not parsed.host:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise InvalidArgument(f"{what} {shown!r} must be an {allowed} URL with a host")
    if port is not None and not 0 < port < 65536:
        raise InvalidArgument(f"{what} {shown!r} has an invalid port {port}")
    host = parsed.host.lower()
    if _address(host) is None:
        last = host.rstrip(".").rsplit(".", 1)[-1]
        if _NUMERIC_LABEL.match(last):
            raise InvalidArgument(f"{what} {shown!r}: host {host!r} is not a canonical IP address")
        if not _NAME.match(host):
            raise InvalidArgument(f"{what} {shown!r}: host {host!r} is not a valid host name")
    return parsed.copy_with(fragment=None)


def is_remote(location: str) -> bool:
    """Whether an artifact location is fetched over HTTP (its content then is not the caller's to
    read back in error messages)."""
    return location.lower().startswith(("http://", "https://"))


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class HostRules:
    """An allow-list of host names, IP addresses and CIDR networks; `*` allows any host.

    A name on the list is allowed whatever it resolves to (the operator named it). Any other host is
    allowed only when every address it resolves to lies in a listed network, so that a name cannot
    smuggle in an address the list does not cover."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules = list(rules)
        self.any = "*" in self.rules
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for rule in self.rules:
            if rule == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(rule.strip("[]"), strict=False))
            except ValueError:
                self.names.add(rule.lower().rstrip("."))

    def allows_address(self, address: str) -> bool:
        ip = _address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return self.any or (ip is not None and any(ip in network for network in self.networks))

    def allows_name(self, host: str) -> bool:
        return self.any or host.lower().rstrip(".") in self.names

    def allows(self, host: str) -> bool:
        """Whether `host` may be reached (resolving it when no rule names it; this blocks)."""
        if self.allows_name(host):
            return True
        if _address(host) is not None:
            return self.allows_address(host)
        if not self.networks:
            return False
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError:
            return False
        return bool(addresses) and all(self.allows_address(a) for a in addresses)

    def __str__(self) -> str:
        return ", ".join(self.rules) if self.rules else "(none)"
