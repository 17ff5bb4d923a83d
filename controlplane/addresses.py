"""`HOST:PORT` as flags and Sidecar endpoints write it, parsed in one place, so that IPv6 brackets, empty
hosts and port ranges mean the same everywhere; and the inverse, a host as it goes before `:PORT`."""

from __future__ import annotations

import ipaddress
import re

_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*)$")


class InvalidAddress(ValueError):
    """Not `HOST:PORT`; callers say where it was written."""


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT`; with `default_port` also `HOST`, `[IPV6]` or a bare IPv6 address. The
    host comes without brackets and may be empty (`:PORT`); the port is 1 to 65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not (host.endswith("]") or ":" not in host):
        # No port: the whole text is the host (a bare IPv6 address has colons and no port).
        if default_port is None:
            raise InvalidAddress(text)
        host, port = text, str(default_port)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
    if not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidAddress(text)
    return host.strip("[]"), int(port)


def host_for_url(host: str) -> str:
    """A host as it goes before `:PORT`: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address, not a name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
