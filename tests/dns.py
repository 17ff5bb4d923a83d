"""A DNS server on loopback that answers for the names it is given, as cluster DNS answers for a
Kubernetes Service: one name, the addresses of every replica behind it. Kubernetes cannot run on the test
machines; Envoy resolves the name through this server as it would through cluster DNS."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

A, IN = 1, 1
TTL_SECONDS = 1


class DnsServer:
    """`records` (name → IPv4 addresses) may be changed while serving, as replicas come and go. A names
    get every address; other types of a known name an empty answer; unknown names NXDOMAIN."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._socket.recvfrom(4096)
            except OSError:  # closed
                return
            try:
                self._socket.sendto(self.answer(query), peer)
            except (OSError, ValueError, IndexError, struct.error):
                continue  # a malformed query gets no answer, as from a real server

    def answer(self, query: bytes) -> bytes:
        ident, flags = struct.unpack("!HH", query[:4])
        position, labels = 12, []
        while length := query[position]:
            labels.append(query[position + 1 : position + 1 + length].decode("ascii"))
            position += 1 + length
        qtype, _qclass = struct.unpack("!HH", query[position + 1 : position + 5])
        question = query[12 : position + 5]
        addresses = self.records.get(".".join(labels).lower())
        answers = list(addresses or []) if qtype == A else []
        # QR, authoritative, the client's recursion-desired bit, recursion available; NXDOMAIN for a stranger.
        reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (0 if addresses is not None else 3)
        header = struct.pack("!HHHHHH", ident, reply_flags, 1, len(answers), 0, 0)
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, A, IN, TTL_SECONDS, 4) + socket.inet_aton(address) for address in answers
        )
        return header + question + records

    def envoy_resolver(self) -> dict[str, Any]:
        """The bootstrap's `typed_dns_resolver_config` that sends every lookup here and nowhere else."""
        return {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": self.port, "protocol": "UDP"}}],
                "dns_resolver_options": {"no_default_search_domain": True},
            },
        }


@contextmanager
def dns_server(records: dict[str, list[str]]) -> Iterator[DnsServer]:
    server = DnsServer(records)
    server._thread.start()
    try:
        yield server
    finally:
        server._socket.close()
